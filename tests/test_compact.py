"""Compact modules (`strategy="channel"`): physically pruned, exact where the statistics say a channel is unused,
consistent on the residual stream, sharing the parent's untouched prefix, and usable through every interface."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard

import hf_modular  # noqa: F401
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.decompose import decompose
from hf_modular.decompose.heads import channel_head
from hf_modular.decompose.sampling import plan_samples
from hf_modular.decompose.strategies.channel import ChannelSelection, ChannelStrategy, prune
from hf_modular.decompose.strategies.channel.importance import collect_channel_scores, log_odds
from hf_modular.decompose.strategies.channel.recovery import distillation_data
from hf_modular.distributed import distributed_state
from hf_modular.hub import module_card
from hf_modular.models import image_processor_for
from hf_modular.module import count_parameters
from tests.hub_server import DEFAULT_USER, HubServer, hub_server_fixture  # noqa: F401
from tests.test_decompose import image_dataset, tiny_config

NAMES = ["dark", "bright", "mid"]
DISTILL = dict(distill_images=24, distill_batch_size=8)


def _parent(seed: int = 0, **config) -> ModularResNetForImageClassification:
    torch.manual_seed(seed)
    model = ModularResNetForImageClassification(tiny_config(layers=[2, 2], id2label=dict(enumerate(NAMES)), **config))
    with torch.no_grad():  # random batch-norm statistics, so every channel carries something
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.3)
    return model.eval()


def _data(count: int = 8):
    return image_dataset([30, 220, 128] * count, [0, 1, 2] * count, noise=30, names=NAMES)


@pytest.fixture(scope="module")
def compact():
    parent = _parent()
    parent.config.training = {"epochs": 1}  # a trained parent's records, which its compact modules must not carry
    parent.config.origin = {"source": "resnet.th", "format": "CIFAR ResNet checkpoint"}
    return decompose(parent, _data(), strategy="channel", samples_per_class=4, progress=False, **DISTILL)


def _masked_equivalent(model, selection: ChannelSelection) -> ModularResNetForImageClassification:
    """The full network with every removed channel held at zero by a mask after its ReLU."""
    config = copy.deepcopy(model.config)
    shapes = model.site_shapes("relu")
    config.mask_shapes = {name: list(shape) for name, shape in shapes.items()}
    masked = ModularResNetForImageClassification(config)
    state = dict(model.state_dict())
    for name, shape in shapes.items():
        keep = torch.zeros(shape[0], dtype=torch.bool)
        if name == "act1":
            keep[selection.residual[0]] = True
        else:
            stage = model.stage_layers.index(name.split(".")[0]) + 1
            block, act = name.rsplit(".", 1)
            inner = selection.inner[block]
            keep[inner[0] if act == "act1" else selection.residual[stage]] = True
        state[f"{name}.mask"] = keep[:, None, None].expand(shape).clone()
    masked.load_state_dict(state)
    return masked.eval()


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_pruned_network_equals_the_full_one_with_removed_channels_at_zero(shortcut):
    parent = _parent(shortcut=shortcut)
    generator = torch.Generator().manual_seed(1)

    def some(count: int, keep: int) -> torch.Tensor:
        return torch.randperm(count, generator=generator)[:keep].sort().values

    stream1 = some(4, 2)  # the stem and stage 1 share a stream (identity shortcut): one selection for both
    selection = ChannelSelection(
        residual=[stream1, stream1, some(8, 5)],
        inner={name: [some(block.conv1.out_channels, 2)] for name, block in parent.blocks()},
    )
    pruned = prune(parent, selection)
    assert count_parameters(pruned) < count_parameters(parent) / 2
    assert pruned.config.stage_channels == [2, 2, 5] and pruned.config.block_widths == [[2, 2], [2, 2]]
    pixel_values = torch.randn(6, 3, 8, 8, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(pixel_values).logits, _masked_equivalent(parent, selection)(pixel_values).logits
        )
    untied = ChannelSelection(residual=[some(4, 3), stream1, some(8, 5)], inner=selection.inner)
    with pytest.raises(ValueError, match="identity shortcut"):
        prune(parent, untied)


def test_channels_the_statistics_find_unused_go_without_changing_outputs():
    parent = _parent()
    with torch.no_grad():  # half of every block's inner channels never fire: batch norm pushes them far below zero
        for _, block in parent.blocks():
            block.bn1.bias[block.bn1.num_features // 2 :] = -1e4
    data = _data()
    for importance in ("taylor", "activation"):
        modules = decompose(
            parent,
            data,
            strategy="channel",
            keep=0.5,
            prune_from="layer1",
            importance=importance,
            reconstruct=False,  # the refit below would reproduce them too, up to its regularisation
            distill_steps=0,
            head="channeled",
            samples_per_class=8,
            progress=False,
        )
        pixel_values = image_processor_for(parent.config)(list(data["image"]), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features = parent(pixel_values, output_hidden_states=True).hidden_states[-1].mean(dim=(2, 3))
            for label, module in modules.items():
                assert module.config.block_widths == [[2, 2], [4, 4]]
                weight, bias = channel_head(parent.fc.weight, parent.fc.bias, NAMES.index(label))
                torch.testing.assert_close(module(pixel_values).logits, F.linear(features, weight, bias))


def test_compact_modules_are_smaller_and_share_the_parents_prefix(compact, tmp_path):
    parent = _parent()
    for module in compact.values():
        details = module.config.provenance.details
        assert module.config.is_pruned and module.config.mask_shapes is None
        assert module.config.training is None and module.config.origin is None
        assert module.config.provenance.parent.origin["source"] == "resnet.th"  # the parent's, named as its parent
        assert count_parameters(module) < count_parameters(parent)
        assert details["macs_fraction"] < 1 and details["shared_steps"] == 4  # all but the last block (the default)
    composed = ComposedModel.from_modules(list(compact.values())).eval()
    pixel_values = torch.rand(5, 3, 8, 8)
    stem_calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: (
            stem_calls.append(1) if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3 else None
        )
    )
    try:
        with torch.no_grad():
            shared = composed.module_logits(pixel_values)
            calls_shared = len(stem_calls)
            alone = composed.module_logits(pixel_values, shared=False)
    finally:
        hook.remove()
    assert calls_shared == 1 and len(stem_calls) - calls_shared == len(compact)  # once, against once per module
    torch.testing.assert_close(shared, alone)
    assert composed.execution_plan.shared_steps == 4 * (len(compact) - 1)

    # Modules of another parent share nothing with these, and the composition still answers exactly.
    other = decompose(_parent(seed=5), _data(), strategy="channel", samples_per_class=4, progress=False, **DISTILL)
    composed.replace("mid", other["mid"])
    with torch.no_grad():
        torch.testing.assert_close(
            composed.module_logits(pixel_values), composed.module_logits(pixel_values, shared=False)
        )
    assert composed.execution_plan.shared_steps == 4


def test_compact_module_round_trip(compact, tmp_path):
    module = compact["bright"]
    module.save_pretrained(tmp_path / "bright")
    pixel_values = torch.rand(3, 3, 8, 8)
    loaded = ModularResNetForImageClassification.from_pretrained(tmp_path / "bright")
    via_timm = timm.create_model(f"local-dir:{tmp_path / 'bright'}", pretrained=True).eval()
    with torch.no_grad():
        expected = module(pixel_values).logits
        torch.testing.assert_close(loaded(pixel_values).logits, expected)
        torch.testing.assert_close(via_timm(pixel_values), expected)
    card = module_card(loaded.config).content
    details = module.config.provenance.details
    assert "compact module" in card and f"{100 * details['macs_fraction']:.1f}% of the parent's" in card
    assert "Masked nodes" not in card
    composed = ComposedModel.from_modules([tmp_path / "bright", compact["dark"]])
    composed.save_pretrained(tmp_path / "composed", materialize=True)
    reloaded = ComposedModel.from_pretrained(tmp_path / "composed")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.module_logits(pixel_values), composed.module_logits(pixel_values))


def test_compact_module_through_the_hub(hub_server: HubServer, compact):
    """Pushed, then loaded by repo id three ways and composed by repo id with a local module."""
    module, repo_id = compact["bright"], f"{DEFAULT_USER}/tiny-bright-compact-module"
    module.push_to_hub(repo_id)
    pixel_values = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        expected = module(pixel_values).logits
        loaded = ModularResNetForImageClassification.from_pretrained(repo_id)
        torch.testing.assert_close(loaded(pixel_values).logits, expected)
        via_timm = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
        torch.testing.assert_close(via_timm(pixel_values), expected)
        composed = ComposedModel.from_modules([repo_id, compact["dark"]]).eval()
        alone = ComposedModel.from_modules([module, compact["dark"]]).eval()
        torch.testing.assert_close(composed.module_logits(pixel_values), alone.module_logits(pixel_values))
    assert loaded.config.block_widths == module.config.block_widths and loaded.config.is_pruned
    assert "compact module" in ModelCard.load(repo_id).text


@pytest.mark.parametrize(("shortcut", "distill_steps"), [("A", 3), ("B", 0)])  # 0: reconstruction only
def test_modules_pruned_from_the_stem_narrow_every_stream_and_still_compose(shortcut, distill_steps, tmp_path):
    parent = _parent(shortcut=shortcut)
    modules = decompose(
        parent, _data(), strategy="channel", prune_from="stem", keep=0.5, keep_residual=0.5,
        samples_per_class=4, progress=False, distill_steps=distill_steps, **DISTILL,
    )  # fmt: skip
    assert all(("distillation_loss" in m.config.provenance.details) == (distill_steps > 0) for m in modules.values())
    full = parent.config.full_stage_channels  # the stem, then each stage's residual stream
    for module in modules.values():
        assert module.config.stage_channels == [width // 2 for width in full]
        assert module.config.provenance.details["shared_steps"] == 0
        assert count_parameters(module) < count_parameters(parent) / 2
    modules["dark"].save_pretrained(tmp_path / "dark")
    again = ModularResNetForImageClassification.from_pretrained(tmp_path / "dark")
    pixel_values = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values).logits, modules["dark"](pixel_values).logits)
        composed = ComposedModel.from_modules(list(modules.values())).eval()
        torch.testing.assert_close(
            composed.module_logits(pixel_values), composed.module_logits(pixel_values, shared=False)
        )
    # Distilled per class, every step differs between modules; refitted only, modules that kept the same channels
    # of a step have identical steps there (in this seeded run, some do), and the plan runs those once.
    assert (composed.execution_plan.shared_steps == 0) == (distill_steps > 0)


def test_bad_channel_options():
    parent, data = _parent(), _data(2)
    with pytest.raises(ValueError, match="prune_from='layer9'"):
        decompose(parent, data, strategy="channel", prune_from="layer9", progress=False)
    with pytest.raises(ValueError, match="shares of channels"):
        decompose(parent, data, strategy="channel", keep=0, progress=False)
    with pytest.raises(ValueError, match="importance must be one of"):
        decompose(parent, data, strategy="channel", importance="magnitude", progress=False)
    with pytest.raises(ValueError, match="starts inside the last stage"):  # keep_residual would do nothing
        decompose(parent, data, strategy="channel", keep_residual=0.5, progress=False)
    with pytest.raises(ValueError, match="distill_images"):
        decompose(parent, data, strategy="channel", distill_images=0, progress=False)


def test_recovery_data_holds_each_image_and_its_mirror_image_through_the_frozen_prefix():
    parent, data = _parent(), image_dataset([30, 220, 128], [0, 1, 2], noise=60, names=NAMES)
    strategy = ChannelStrategy(prune_from="layer2", distill_images=3)
    start = strategy.shared_steps(parent)
    features, teacher = distillation_data(parent, data, "image", start, count=3, mirror=True, seed=0)
    pixel_values = image_processor_for(parent.config)(
        [image.convert("RGB") for image in data["image"]], return_tensors="pt"
    )["pixel_values"]
    both = torch.cat([pixel_values, pixel_values.flip(-1)])
    with torch.no_grad():
        assert torch.allclose(features, torch.nn.Sequential(*parent.steps()[:start])(both), atol=1e-5)
        assert torch.allclose(teacher, log_odds(parent(both).logits), atol=1e-5)
    assert not torch.allclose(features[:3], features[3:])  # the noisy images are not symmetric
    plain, _ = distillation_data(parent, data, "image", start, count=3, mirror=False, seed=0)
    assert len(plain) == 3


def test_cli_decomposes_into_compact_modules_and_resumes(tmp_path, capsys):
    from hf_modular.cli import main

    _parent().save_pretrained(tmp_path / "parent")
    _data().to_parquet(str(tmp_path / "train.parquet"))
    command = [
        "-q",
        "decompose",
        str(tmp_path / "parent"),
        "--dataset",
        str(tmp_path / "train.parquet"),
        "--strategy",
        "channel",
        "--keep",
        "0.5",
        "--samples-per-class",
        "4",
        "--distill-steps",
        "3",
        "--distill-images",
        "24",
        "--output",
        str(tmp_path / "modules"),
    ]
    assert main(command) == 0
    assert "of the parent's multiply-accumulates" in capsys.readouterr().out
    report = json.loads((tmp_path / "modules" / "decomposition.json").read_text())
    assert set(report["modules"]) == set(NAMES) and 0 < report["mean_macs_fraction"] < 1
    module = ModularResNetForImageClassification.from_pretrained(tmp_path / "modules" / "dark-module")
    assert module.config.provenance.method.strategy == "channel" and module.config.block_widths[-1] == [8, 4]
    assert "compact module" in (tmp_path / "modules" / "dark-module" / "README.md").read_text()
    assert main(command) == 0  # same parent, data and options: nothing is rebuilt
    report = json.loads((tmp_path / "modules" / "decomposition.json").read_text())
    assert all(row["resumed"] for row in report["modules"].values())


@pytest.mark.parametrize("importance", ["taylor", "activation"])
def test_channel_scores_are_each_modules_mean_over_its_own_rows(importance):
    # Reference: one row at a time, plain autograd, each module's score the mean over the rows it uses.
    parent, data = _parent(), _data(4)
    labels = torch.tensor(data["label"])
    plan = plan_samples(labels, [0, 2], 3, samples_per_class=3, negatives_ratio=1.0, seed=0)
    sites = list(parent.sites("relu"))[:2]
    scores = collect_channel_scores(
        parent, data, plan, sites, importance=importance, image_column="image", label_column="label",
        batch_size=5, state=distributed_state(), progress=False,
    )  # fmt: skip
    processor = image_processor_for(parent.config)
    captured = {}
    for name in sites:
        parent.sites("relu")[name].register_forward_hook(lambda m, i, out, name=name: captured.__setitem__(name, out))
    expected = {name: torch.zeros(2, scores[name].shape[1], dtype=torch.float64) for name in sites}
    usage = plan.own | plan.negative
    for position, row in enumerate(plan.rows.tolist()):
        pixel_values = processor(data[row]["image"], return_tensors="pt")["pixel_values"]
        for m, class_index in enumerate(plan.classes):
            if not usage[position, m]:
                continue
            logits = parent(pixel_values.requires_grad_(True)).logits
            activations = [captured[name] for name in sites]
            gradients = torch.autograd.grad(log_odds(logits)[0, class_index], activations)
            for name, activation, gradient in zip(sites, activations, gradients, strict=True):
                value = activation.mean((2, 3)) if importance == "activation" else (activation * gradient).sum((2, 3))
                expected[name][m] += (value if importance == "activation" else value.square())[0].detach().double()
    for name in sites:
        expected[name] /= usage.sum(0)[:, None]
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-4, atol=1e-9)
