"""ModularResNetConfig: presets, JSON round trip, the timm keys in config.json, and validation errors."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch import nn

from hf_modular import PRESETS, ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.models import ARCHITECTURE_FIELDS
from hf_modular.module.provenance import (
    DatasetRecord,
    MethodRecord,
    ModuleProvenance,
    ParentRecord,
    SampleCounts,
    SamplingRecord,
)

TIMM_KEYS = ("architecture", "num_classes", "num_features", "pretrained_cfg", "model_args", "label_names")

# Parameter counts of the CIFAR ResNets (10 classes) as documented in ../shared/README.md, in millions.
DOCUMENTED_PARAMS_M = {
    "modular_resnet20": 0.27,
    "modular_resnet32": 0.46,
    "modular_resnet44": 0.66,
    "modular_resnet56": 0.85,
}


def _input_size(config: ModularResNetConfig) -> int:
    """A small valid input: 64x64 for the ImageNet stem, 16x16 for the 64-channel CIFAR-stem ResNets, else 32x32.

    Every preset is fully convolutional with global pooling, so a smaller input exercises the same layers."""
    if config.stem_type == "imagenet":
        return 64
    return 16 if config.stem_width > 16 else config.image_size


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_expected_structure(name):
    config = ModularResNetConfig.from_preset(name, num_labels=7)
    model = ModularResNetForImageClassification(config).eval()
    preset = PRESETS[name]
    assert config.preset == name
    assert config.layers == preset["layers"] and config.widths == preset["widths"]

    expansion = 4 if config.block_type == "bottleneck" else 1
    assert config.num_features == config.widths[-1] * expansion == model.num_features
    assert model.fc.in_features == config.num_features and model.fc.out_features == 7

    # The stem.
    kernel, stride = (7, 2) if config.stem_type == "imagenet" else (3, 1)
    assert model.conv1.kernel_size == (kernel, kernel) and model.conv1.stride == (stride, stride)
    assert model.conv1.out_channels == config.stem_width
    assert isinstance(model.maxpool, nn.MaxPool2d) == (config.stem_type == "imagenet")

    # One stage per entry of `layers`, each with that many blocks of the stage's width.
    for index, (depth, width) in enumerate(zip(config.layers, config.widths, strict=True)):
        stage = getattr(model, f"layer{index + 1}")
        assert len(stage) == depth
        for block_index, block in enumerate(stage):
            assert block.conv1.out_channels == width
            assert block.conv2.out_channels == width
            out_conv = block.conv3 if config.block_type == "bottleneck" else block.conv2
            assert out_conv.out_channels == width * expansion
            stride = 2 if index > 0 and block_index == 0 else 1
            strided = block.conv2 if config.block_type == "bottleneck" else block.conv1
            assert strided.stride == (stride, stride)
    assert not hasattr(model, f"layer{len(config.layers) + 1}")

    size = _input_size(config)
    with torch.no_grad():
        logits = model(torch.randn(2, config.num_channels, size, size)).logits
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(DOCUMENTED_PARAMS_M))
def test_cifar_presets_have_documented_parameter_counts(name):
    model = ModularResNetForImageClassification(ModularResNetConfig.from_preset(name, num_labels=10))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == DOCUMENTED_PARAMS_M[name]


def _provenance(label: str) -> dict:
    """A complete module section, as `decompose` records it."""
    parent = ParentRecord(weights_sha256="0" * 64, architecture="modular_resnet20", labels=["cat", "dog", "bird"])
    return ModuleProvenance(
        target_label=label,
        target_index=0,
        parent=parent,
        dataset=DatasetRecord(name_or_path="cifar10", split="train"),
        method=MethodRecord("activation", {"sites": "relu"}),
        sampling=SamplingRecord(samples_per_class=10, negatives_ratio=1.0, seed=0),
        samples=SampleCounts(own=10, negative=10),
        compute={"wall_seconds": 1.0},
    ).to_dict()


def _rich_config() -> ModularResNetConfig:
    return ModularResNetConfig.from_preset(
        "modular_resnet20",
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "bird"},
        mask_shapes={"layer1.0.act1": [16, 32, 32]},
        module=_provenance("cat"),
        image_mean=[0.1, 0.2, 0.3],
        image_std=[0.4, 0.5, 0.6],
    )


def test_json_round_trip_keeps_every_field():
    config = _rich_config()
    restored = ModularResNetConfig(**json.loads(config.to_json_string()))
    for field in (*ARCHITECTURE_FIELDS, "image_mean", "image_std", "preset", "module", "num_labels", "id2label"):
        assert getattr(restored, field) == getattr(config, field), field
    assert restored.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert restored.to_dict() == config.to_dict()


def test_save_and_from_pretrained_round_trip(tmp_path):
    config = _rich_config()
    config.save_pretrained(tmp_path)
    restored = ModularResNetConfig.from_pretrained(tmp_path)
    assert type(restored) is ModularResNetConfig
    assert restored.to_dict() == config.to_dict()


def test_config_json_carries_timm_keys(tmp_path):
    config = _rich_config()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "modular_resnet"
    assert saved["architecture"] == "modular_resnet20"
    assert saved["num_classes"] == 3
    assert saved["num_features"] == 64
    assert saved["label_names"] == ["cat", "dog", "bird"]
    normalisation = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}  # timm's defaults are RGB's
    assert saved["model_args"] == {**{field: getattr(config, field) for field in ARCHITECTURE_FIELDS}, **normalisation}
    cfg = saved["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32]
    assert cfg["mean"] == [0.1, 0.2, 0.3] and cfg["std"] == [0.4, 0.5, 0.6]
    assert cfg["num_classes"] == 3
    assert cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"


def test_custom_shape_names_the_generic_timm_architecture(tiny_config):
    saved = tiny_config.to_dict()
    assert tiny_config.preset is None
    assert saved["architecture"] == "modular_resnet"
    assert saved["model_args"]["layers"] == [1, 1] and saved["model_args"]["widths"] == [4, 8]


def test_timm_keys_are_not_carried_as_attributes(tmp_path):
    config = _rich_config()
    data = json.loads(config.to_json_string())
    # Tamper with the derived keys: the typed fields must win, and the keys must not become attributes.
    data.update(architecture="bogus", num_classes=999, num_features=999, label_names=["x"], model_args={"layers": [9]})
    restored = ModularResNetConfig(**data)
    for key in TIMM_KEYS:
        assert key not in vars(restored), key
    assert restored.num_features == 64
    assert restored.num_labels == 3
    redone = restored.to_dict()
    assert redone["architecture"] == "modular_resnet20"
    assert redone["num_classes"] == 3 and redone["label_names"] == ["cat", "dog", "bird"]
    assert redone["model_args"]["layers"] == [3, 3, 3]

    config.save_pretrained(tmp_path)
    reloaded = ModularResNetConfig.from_pretrained(tmp_path)
    for key in TIMM_KEYS:
        assert key not in vars(reloaded), key


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="modular_resnet21") as info:
        ModularResNetConfig.from_preset("modular_resnet21")
    for name in PRESETS:
        assert name in str(info.value)


def _config_error(**fields) -> str:
    # transformers' strict config wraps the ValueError raised by `validate_architecture`.
    with pytest.raises((ValueError, StrictDataclassClassValidationError)) as info:
        ModularResNetConfig(**fields)
    return str(info.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"layers": [1, 2, 3], "widths": [4, 8]}, ["layers=[1, 2, 3]", "widths=[4, 8]", "same length"]),
        ({"layers": [], "widths": []}, ["non-empty"]),
        ({"block_type": "wide"}, ["block_type='wide'", "basic", "bottleneck"]),
        ({"stem_type": "deep"}, ["stem_type='deep'", "cifar", "imagenet"]),
        ({"shortcut": "C"}, ["shortcut='C'", "'A'", "'B'"]),
        ({"layers": [0, 1], "widths": [4, 8]}, ["`layers` must be an integer >= 1, got 0"]),
        ({"image_mean": [0.5, 0.5]}, ["image_mean", "num_channels=3"]),
        ({"image_std": [0.5]}, ["image_std", "num_channels=3"]),
        ({"num_channels": 1}, ["image_mean", "num_channels=1"]),
    ],
)
def test_invalid_config_names_the_problem(fields, expected):
    message = _config_error(**fields)
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_one_number_stands_for_every_channel_as_transformers_processors_take_it(tmp_path):
    assert ModularResNetConfig(image_mean=0.5, image_std=0.25).image_std == [0.25, 0.25, 0.25]
    config = ModularResNetConfig(layers=[1], widths=[4], stem_width=4)
    config.image_std = 1e-10  # as transformers' tests set every `*_std` field before saving
    ModularResNetForImageClassification(config).save_pretrained(tmp_path / "m")
    assert ModularResNetConfig.from_pretrained(tmp_path / "m").image_std == [1e-10] * 3


def test_a_config_changed_after_construction_is_checked_when_a_model_is_built():
    config = ModularResNetConfig(layers=[1], widths=[4], stem_width=4, head_type="softmax", head_rows=3, num_labels=2)
    config.num_labels = 1  # as transformers' test_problem_types sets it
    with pytest.raises(StrictDataclassClassValidationError, match="num_labels must be 2"):
        ModularResNetForImageClassification(config)


def test_valid_single_channel_config():
    config = ModularResNetConfig(num_channels=1, image_mean=[0.5], image_std=[0.25], layers=[1], widths=[4])
    model = ModularResNetForImageClassification(config)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).logits.shape == (1, config.num_labels)
