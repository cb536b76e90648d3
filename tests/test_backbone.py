"""`ModularResNetBackbone` behaves as transformers' `ResNetBackbone` does for detection and segmentation code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoBackbone, ResNetConfig
from transformers.modeling_outputs import BackboneOutput

import hf_modular
from hf_modular import ModularResNetBackbone, ModularResNetConfig, ModularResNetForImageClassification
from tests.conftest import randomize_
from tests.hub_server import hub_server_fixture  # noqa: F401
from tests.test_decompose import dark_bright_dataset, tiny_config

FIXTURES = Path(__file__).parent / "fixtures" / "release-0.1.0"


@pytest.fixture(scope="module")
def classifier() -> ModularResNetForImageClassification:
    torch.manual_seed(0)
    return randomize_(ModularResNetForImageClassification(tiny_config(layers=[1, 1, 1], widths=[4, 8, 8])).eval())


def test_stage_names_and_defaults_follow_transformers_resnet():
    ours, theirs = ModularResNetConfig(layers=[2, 2, 2, 2], widths=[8, 8, 8, 8]), ResNetConfig(depths=[2, 2, 2, 2])
    assert ours.stage_names == theirs.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert (ours.out_features, ours.out_indices) == (theirs.out_features, theirs.out_indices)
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        ModularResNetConfig(out_features=["layer9"])
    # transformers' backbone tests count the stages with `config.depths`; it is `layers`, not a second field.
    assert ours.depths == theirs.depths == [2, 2, 2, 2] and "depths" not in ours.to_dict()
    assert len(ModularResNetConfig().stage_names) == len(ModularResNetConfig().depths) + 1


def test_feature_maps_are_the_classifiers_hidden_states(tmp_path, classifier):
    classifier.save_pretrained(tmp_path / "model")
    backbone = ModularResNetBackbone.from_pretrained(tmp_path / "model", out_features=["stem", "stage2", "stage3"])
    pixel_values = torch.randn(2, 3, 8, 8)
    output = backbone.eval()(pixel_values)
    hidden_states = classifier(pixel_values, output_hidden_states=True).hidden_states
    assert isinstance(output, BackboneOutput) and output.hidden_states is None
    assert len(output.feature_maps) == 3
    for feature_map, expected in zip(output.feature_maps, [hidden_states[i] for i in (0, 2, 3)], strict=True):
        assert torch.equal(feature_map, expected)
    assert backbone.out_indices == [0, 2, 3] and backbone.channels == [4, 8, 8]
    assert backbone.out_feature_channels == {"stem": 4, "stage1": 4, "stage2": 8, "stage3": 8}
    as_tuple = backbone(pixel_values, output_hidden_states=True, return_dict=False)
    assert len(as_tuple) == 2 and len(as_tuple[1]) == 4  # (feature_maps, hidden_states), as ResNetBackbone returns
    assert not hasattr(backbone, "fc")  # the head is left out, and its tensors are not reported as unexpected


def test_a_modules_backbone_keeps_its_masks(tmp_path, classifier):
    modules = hf_modular.decompose(classifier, dark_bright_dataset(), samples_per_class=6, progress=False)
    module = modules["dark"].eval()
    assert module.config.mask_shapes
    module.save_pretrained(tmp_path / "dark-module")
    backbone = ModularResNetBackbone.from_pretrained(tmp_path / "dark-module", out_indices=[3]).eval()
    pixel_values = torch.randn(2, 3, 8, 8)
    assert torch.equal(backbone(pixel_values).feature_maps[0], module.forward_intermediates(pixel_values, [3])[1][0])


def test_auto_backbone_builds_and_downloads_it(hub_server, classifier):
    assert type(AutoBackbone.from_config(classifier.config)) is ModularResNetBackbone
    classifier.push_to_hub("user/backbone-parent")
    backbone = AutoBackbone.from_pretrained("user/backbone-parent", out_features=["stage1", "stage3"])
    assert type(backbone) is ModularResNetBackbone and backbone.out_features == ["stage1", "stage3"]
    shapes = [tuple(map_.shape) for map_ in backbone(torch.randn(1, 3, 8, 8)).feature_maps]
    assert shapes == [(1, 4, 8, 8), (1, 8, 2, 2)]


def test_saved_choices_round_trip_and_old_configs_get_the_default(tmp_path):
    config = ModularResNetConfig(layers=[1, 1], widths=[4, 8], out_features=["stem", "stage2"])
    config.save_pretrained(tmp_path)
    assert ModularResNetConfig.from_pretrained(tmp_path).out_indices == [0, 2]
    old = ModularResNetConfig.from_pretrained(FIXTURES / "parent")  # saved by 0.1.0, before backbones
    assert old.out_features == [old.stage_names[-1]]
