"""timm side: registry entries for every preset, and from_timm conversion of timm ResNets with identical logits."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from hf_modular import PRESETS, ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.models.timm_models import TimmModularResNet


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _max_abs_diff(timm_model: nn.Module, converted: ModularResNetForImageClassification, size: int) -> float:
    x = _images(size)
    with torch.no_grad():
        expected = timm_model(x)
        actual = converted(x).logits
    assert actual.shape == expected.shape
    # The comparison means something only if the logits are not degenerate.
    assert expected.std() > 1e-2
    assert not torch.allclose(expected[0], expected[1])
    return (actual - expected).abs().max().item()


def test_registry_lists_every_preset():
    registered = set(timm.list_models("modular_resnet*"))
    assert set(PRESETS) | {"modular_resnet"} <= registered


@pytest.mark.parametrize("name", list(PRESETS))
def test_create_model_for_every_preset(name):
    model = timm.create_model(name, num_classes=10).eval()
    config = ModularResNetConfig.from_preset(name)
    assert isinstance(model, ModularResNetForImageClassification)
    assert model.pretrained_cfg["architecture"] == name
    assert model.config.preset == name
    assert model.config.num_labels == 10 and model.fc.out_features == 10
    assert model.config.architecture_args() == config.architecture_args()
    size = 64 if config.stem_type == "imagenet" else (16 if config.stem_width > 16 else 32)
    with torch.no_grad():
        logits = model(_images(size, batch=2))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)


def test_timm_model_api():
    model = timm.create_model("modular_resnet20", num_classes=10)
    assert isinstance(model, TimmModularResNet)
    assert model.get_classifier() is model.fc
    model.reset_classifier(4)
    assert model.fc.out_features == 4 and model.num_classes == 4
    assert model.eval()(_images(32, batch=1)).shape == (1, 4)


def test_timm_training_options():
    # What timm's train.py passes (create_model drops the None values): the defaults build the model.
    options = {"drop_rate": 0.0, "drop_path_rate": None, "drop_block_rate": None, "global_pool": None}
    model = timm.create_model("modular_resnet20", num_classes=10, **options)
    images = _images(32, batch=4)
    dropped = timm.create_model("modular_resnet20", num_classes=10, drop_rate=0.5)
    dropped.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(dropped.eval()(images), model.eval()(images))  # dropout in training only
        assert not torch.equal(dropped.train()(images), model.train()(images))
    model.reset_classifier(0, global_pool="")  # timm's "no pooling": the last feature map
    assert model.eval()(images).shape == (4, model.num_features, 8, 8)
    with pytest.raises(ValueError, match="only without a classifier"):  # a linear head needs pooled features
        model.reset_classifier(5, global_pool="")
    assert model.num_classes == 0 and model.eval()(images).dim() == 4  # left as it was
    model.reset_classifier(5)  # a classifier asked for without naming a pool: pooled again, as timm's tests expect
    assert model.eval()(images).shape == (4, 5) and not model.fc.training  # the new head follows the model's mode
    with pytest.raises(AssertionError, match="pools by average"):  # what timm's pooling raises for a type it lacks
        model.reset_classifier(7, "catavgmax")
    model.reset_classifier(5, global_pool="avg")
    assert model.eval()(images).shape == (4, 5)
    for wrong, message in [
        ({"drop_path_rate": 0.1}, "no stochastic depth: drop_path_rate must be 0 or None, not 0.1"),
        ({"global_pool": "max"}, "pools by average"),
        ({"global_pool": ""}, "only without a classifier"),
        ({"drop_rate": 1.0}, r"drop_rate must be in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            timm.create_model("modular_resnet20", num_classes=10, **wrong)


def test_generic_architecture_takes_config_fields():
    model = timm.create_model("modular_resnet", num_classes=3, layers=[1, 1], widths=[4, 8], stem_width=4)
    assert model.config.layers == [1, 1] and model.config.widths == [4, 8]
    assert model.eval()(_images(32, batch=1)).shape == (1, 3)
    with pytest.raises(TypeError, match="depth"):
        timm.create_model("modular_resnet", depth=18)


def test_reset_classifier_then_save_is_loadable(tmp_path):
    model = timm.create_model("modular_resnet20", num_classes=10)
    model.reset_classifier(4)
    model.save_pretrained(tmp_path / "model")
    loaded = ModularResNetForImageClassification.from_pretrained(tmp_path / "model")
    assert loaded.config.num_labels == 4


def test_num_classes_zero_returns_pooled_features():
    model = timm.create_model("modular_resnet20", num_classes=0).eval()
    assert model(_images(32, batch=1)).shape == (1, model.num_features)


def test_create_model_in_chans_override():
    model = timm.create_model("modular_resnet20", num_classes=10, in_chans=1)
    assert model.conv1.in_channels == 1
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("name", "block_type", "layers"), [("resnet18", "basic", [2, 2, 2, 2]), ("resnet50", "bottleneck", [3, 4, 6, 3])]
)
def test_from_timm_resnet_gives_the_same_logits(randomize, name, block_type, layers):
    timm_model = randomize(timm.create_model(name, num_classes=10), seed=1).eval()
    converted = ModularResNetForImageClassification.from_timm(timm_model)
    assert type(converted) is ModularResNetForImageClassification
    assert not converted.training
    assert converted.config.block_type == block_type and converted.config.layers == layers
    assert converted.config.stem_type == "imagenet" and converted.config.shortcut == "B"
    assert converted.config.num_labels == 10
    # The conversion lands on our preset of the same name: the presets are timm's architectures.
    preset = ModularResNetConfig.from_preset(f"modular_{name}")
    assert converted.config.architecture_args() == preset.architecture_args()
    assert _max_abs_diff(timm_model, converted, size=64) <= 1e-5


def test_from_timm_cifar_stem_resnet(randomize):
    # timm's ResNet has no CIFAR stem option; the usual recipe swaps in a 3x3 stride-1 conv and drops the max-pool.
    timm_model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    timm_model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    timm_model.maxpool = nn.Identity()
    randomize(timm_model, seed=2).eval()
    converted = ModularResNetForImageClassification.from_timm(timm_model)
    assert converted.config.stem_type == "cifar" and converted.config.image_size == 32
    assert converted.config.layers == [1, 1, 1, 1]
    assert _max_abs_diff(timm_model, converted, size=32) <= 1e-5


def test_from_timm_on_our_own_timm_model(randomize):
    timm_model = randomize(timm.create_model("modular_resnet20", num_classes=10), seed=4).eval()
    converted = ModularResNetForImageClassification.from_timm(timm_model)
    assert type(converted) is ModularResNetForImageClassification
    assert converted.config.preset == "modular_resnet20" and converted.config.shortcut == "A"
    assert _max_abs_diff(timm_model, converted, size=32) <= 1e-5


def test_from_timm_by_name_passes_create_kwargs():
    converted = ModularResNetForImageClassification.from_timm("resnet18", num_classes=5)
    assert type(converted) is ModularResNetForImageClassification
    assert converted.config.num_labels == 5 and converted.fc.out_features == 5
    assert converted.config.image_size == 224  # from timm's pretrained config for resnet18
    assert converted.eval()(_images(64, batch=1)).logits.shape == (1, 5)


@pytest.mark.parametrize(
    ("name", "message"),
    [("resnet18d", "deep stem"), ("resnext50_32x4d", "ResNeXt")],
)
def test_from_timm_rejects_unsupported_resnet_variants(name, message):
    with pytest.raises(ValueError, match=message):
        ModularResNetForImageClassification.from_timm(name, num_classes=10)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "vit_tiny_patch16_224", "resnext26ts"])
def test_from_timm_rejects_non_resnet_models(name):
    model = timm.create_model(name, num_classes=10)
    # resnext26ts is timm's ByobNet, not a timm.models.resnet.ResNet, so it is a different model class here.
    with pytest.raises(TypeError, match=type(model).__name__):
        ModularResNetForImageClassification.from_timm(model)


# --- timm's backbone contract: feature maps, intermediates, checkpointing, parameter groups ----------------------


@pytest.mark.parametrize(("name", "size"), [("modular_resnet20", 32), ("modular_resnet18", 64)])
def test_features_only_returns_the_maps_feature_info_describes(name, size):
    features = timm.create_model(name, features_only=True).eval()
    x = _images(size)
    with torch.no_grad():
        maps = features(x)
    info = features.feature_info
    assert len(maps) == len(info.channels()) == (4 if name.endswith("20") else 5)
    for tensor, channels, reduction in zip(maps, info.channels(), info.reduction(), strict=True):
        assert tensor.shape == (2, channels, size // reduction, size // reduction)
    picked = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        chosen = picked(x)
    assert [t.shape[1] for t in chosen] == picked.feature_info.channels() == [info.channels()[1], info.channels()[3]]
    if name.endswith("18"):  # the stage after the last index asked for is left out
        assert "layer4" not in dict(picked.named_children()) and "layer3" in dict(picked.named_children())
        reference = timm.create_model("resnet18", features_only=True).feature_info  # timm's own ResNet-18
        assert info.channels() == reference.channels() and info.reduction() == reference.reduction()


def test_features_only_is_timms_feature_list_with_the_models_own_maps(randomize):
    torch.manual_seed(0)
    features = randomize(timm.create_model("modular_resnet20", features_only=True)).eval()
    torch.manual_seed(0)
    model = randomize(timm.create_model("modular_resnet20", num_classes=10)).eval()
    assert type(features).__name__ == "FeatureListNet"  # as for timm's own ResNet
    x = _images(32)
    with torch.no_grad():
        maps = features(x)
        _, intermediates = model.forward_intermediates(x)
    for got, expected in zip(maps, intermediates, strict=True):
        assert torch.equal(got, expected)
    features.set_grad_checkpointing(True)  # what timm's training script calls on a feature extractor
    features.train()
    sum(m.square().sum() for m in features(x)).backward()
    assert all(p.grad is not None for p in features.parameters())


def test_create_model_places_the_model_where_asked():
    model = timm.create_model("modular_resnet20", num_classes=10, device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64} and model.in_chans == 3
    model.reset_classifier(4)  # a new head where the model is, in its dtype
    assert model.fc.weight.dtype == torch.float64
    assert model.eval()(_images(32).double()).shape == (2, 4)
    assert timm.create_model("modular_resnet20", in_chans=1).in_chans == 1


def test_pruning_to_the_stem_drops_the_max_pool_and_the_head_as_timm_does():
    model = timm.create_model("modular_resnet18").eval()
    reference = timm.create_model("resnet18").eval()
    assert model.prune_intermediate_layers([0]) == reference.prune_intermediate_layers([0]) == [0]
    for pruned in (model, reference):
        assert isinstance(pruned.maxpool, nn.Identity) and isinstance(pruned.fc, nn.Identity)
    assert model.num_features == reference.num_features == 64
    kept = model.forward_intermediates(_images(64), indices=[0], intermediates_only=True)
    assert kept[0].shape == (2, 64, 32, 32)


def test_forward_intermediates_follows_timm():
    model = timm.create_model("modular_resnet20", num_classes=10).eval()
    x = _images(32)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert torch.equal(model.forward_head(final), model(x))
        assert [t.shape[1] for t in intermediates] == [info["num_chs"] for info in model.feature_info]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last_two] == [t.shape for t in intermediates[-2:]]
        early, stopped = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early, intermediates[1]) and torch.equal(stopped[0], intermediates[1])
    assert model.head_hidden_size == model.num_features == 64
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_parameter_groups_cover_every_parameter():
    from timm.models import group_parameters

    model = timm.create_model("modular_resnet20")
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        named = sorted(name for names in groups.values() for name in names)
        assert named == sorted(name for name, _ in model.named_parameters())
    assert len(group_parameters(model, model.group_matcher(coarse=True))) < len(
        group_parameters(model, model.group_matcher())
    )


def test_grad_checkpointing_gives_the_same_gradients(randomize):
    model = randomize(timm.create_model("modular_resnet20", num_classes=10)).train()
    x = _images(32)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.set_grad_checkpointing(True)
    assert model.is_gradient_checkpointing
    assert all(block.gradient_checkpointing for _, block in model.blocks())  # each block recomputes itself
    checkpointed = gradients()
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)
    model.set_grad_checkpointing(False)
    assert not model.is_gradient_checkpointing


def test_resolve_data_config_and_export():
    from timm.data import resolve_data_config

    model = timm.create_model("modular_resnet20", num_classes=10).eval()
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 32, 32) and config["mean"] == tuple(model.config.image_mean)
    x = _images(32)
    exported = torch.export.export(model, (x,))
    traced = torch.jit.trace(model, x)
    graph = torch.fx.symbolic_trace(model)  # timm's feature extraction by graph (`create_feature_extractor`) uses it
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(exported.module()(x), expected)
    torch.testing.assert_close(traced(x), expected)
    torch.testing.assert_close(graph(x), expected)
    torch.testing.assert_close(torch.jit.script(graph)(x), expected)  # timm's fx + TorchScript test
