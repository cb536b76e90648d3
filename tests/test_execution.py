"""Shared execution: modules of one parent run their common trunk once, with exactly the modules' own results."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_modular import ComposedModel
from tests.test_compose import _modules

NAMES_A = ["dark", "bright", "mid"]


@pytest.fixture(scope="module")
def modules_a():
    return _modules(NAMES_A, 0)


@pytest.fixture(scope="module")
def modules_b():
    return _modules(["sun", "night"], 1, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])


def _pixels(count: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _assert_same(composed: ComposedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        shared = composed.module_logits(pixel_values)
        alone = composed.module_logits(pixel_values, shared=False)
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(shared.argmax(-1), alone.argmax(-1))
    return shared


def test_modules_of_one_parent_share_their_trunk(modules_a, modules_b):
    composed = ComposedModel.from_modules([*modules_a.values(), *modules_b.values()]).eval()
    _assert_same(composed, _pixels())
    plan = composed.execution_plan
    # One tree per parent; within a parent every step runs once instead of once per module.
    assert [root.members for root in plan.roots] == [[0, 1, 2], [3, 4]]
    per_module = len(composed.members[0].steps())
    assert plan.shared_steps == per_module * (3 - 1) + per_module * (2 - 1)


def test_a_mask_that_fires_makes_the_module_run_alone(modules_a):
    composed = ComposedModel.from_modules([copy.deepcopy(module) for module in modules_a.values()]).eval()
    masked = copy.deepcopy(composed.members[1])
    site = masked.layer1[0].act1
    site.mask = torch.zeros_like(site.mask) if site.mask is not None else torch.zeros(4, 8, 8, dtype=torch.bool)
    composed.replace("bright", masked)
    pixel_values = _pixels()
    shared = _assert_same(composed, pixel_values)
    assert composed.execution_plan.rerun_fraction > 0
    # One member without any mask at that site (as when a map keeps every node there): it masks nothing.
    composed.members[0].layer1[0].act1.mask = None
    _assert_same(composed, pixel_values)
    # Nothing masked anywhere: the shared trunk answers every pair, and still exactly.
    for module in composed.members:
        for relu in module.sites("relu").values():
            relu.mask = None
    _assert_same(composed, pixel_values)
    assert composed.execution_plan.rerun_fraction == 0
    assert not torch.equal(shared, composed.module_logits(pixel_values))


def test_plan_follows_weights_changed_in_place(modules_a, tmp_path):
    module = modules_a["dark"]
    module.save_pretrained(tmp_path / "dark")
    composed = ComposedModel.from_modules([tmp_path / "dark", modules_a["bright"]]).eval()
    pixel_values = _pixels()
    before = _assert_same(composed, pixel_values)
    with torch.no_grad():
        composed.members[0].layer1[0].conv1.weight.mul_(-1)
    after = _assert_same(composed, pixel_values)
    assert not torch.allclose(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 1], after[:, 1])  # the other module is untouched


def test_training_mode_runs_modules_alone(modules_a):
    composed = ComposedModel.from_modules([copy.deepcopy(module) for module in modules_a.values()])
    composed.train()
    pixel_values = _pixels(4)
    with torch.no_grad():
        torch.testing.assert_close(
            composed.module_logits(pixel_values), composed.module_logits(pixel_values, shared=False)
        )
    assert composed._plan_cache == {}  # no plan was built: batch norm in training mode shares nothing
