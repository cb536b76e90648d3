"""ModularResNet's forward pass, outputs, Auto-class registration, option-A shortcut, masked ReLU sites, and
loading without re-initialisation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

import hf_modular
from hf_modular import (
    ModularResNet,
    ModularResNetConfig,
    ModularResNetForImageClassification,
    ModularResNetModel,
)
from hf_modular.models import MaskedReLU, ShortcutA


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_modular_resnet_is_the_classifier():
    assert ModularResNet is ModularResNetForImageClassification
    assert hf_modular.ModularResNet is ModularResNetForImageClassification


def test_output_type_logits_and_no_loss_without_labels(tiny_config):
    model = ModularResNetForImageClassification(tiny_config).eval()
    output = model(_images())
    assert isinstance(output, ImageClassifierOutputWithNoAttention)
    assert output.logits.shape == (2, 3)
    assert output.loss is None
    assert output.hidden_states is None


def test_loss_is_cross_entropy(tiny_config, randomize):
    model = randomize(ModularResNetForImageClassification(tiny_config)).eval()
    labels = torch.tensor([2, 0])
    output = model(_images(), labels=labels)
    assert output.loss is not None and output.loss.ndim == 0
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels))
    output.loss.backward()  # the loss is differentiable with respect to the weights
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_tuple_output(tiny_config):
    model = ModularResNetForImageClassification(tiny_config).eval()
    x = _images()
    logits = model(x).logits
    as_tuple = model(x, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], logits)


def test_hidden_states_one_per_stage_plus_stem(tiny_config, randomize):
    model = randomize(ModularResNetForImageClassification(tiny_config)).eval()
    x = _images()
    output = model(x, output_hidden_states=True)
    hidden_states = output.hidden_states
    assert len(hidden_states) == 1 + len(tiny_config.layers)
    assert hidden_states[0].shape == (2, tiny_config.stem_width, 32, 32)
    for index, width in enumerate(tiny_config.widths):
        size = 32 // 2**index
        assert hidden_states[index + 1].shape == (2, width, size, size)
    # The last hidden state is what the head pools.
    torch.testing.assert_close(model.fc(hidden_states[-1].mean(dim=(2, 3))), output.logits)


def test_hidden_states_bottleneck_imagenet_stem(randomize):
    config = ModularResNetConfig(
        block_type="bottleneck",
        layers=[1, 1, 1],
        widths=[4, 8, 16],
        stem_type="imagenet",
        stem_width=8,
        shortcut="B",
        image_size=64,
    )
    model = randomize(ModularResNetForImageClassification(config)).eval()
    hidden_states = model(_images(size=64), output_hidden_states=True).hidden_states
    assert len(hidden_states) == 4
    assert hidden_states[0].shape == (2, 8, 16, 16)  # 7x7 stride-2 conv and stride-2 max-pool
    assert [h.shape[1] for h in hidden_states[1:]] == [16, 32, 64]  # 4x expansion
    assert [h.shape[-1] for h in hidden_states[1:]] == [16, 8, 4]


def test_trunk_model_outputs(tiny_config):
    trunk = ModularResNetModel(tiny_config).eval()
    output = trunk(_images(), output_hidden_states=True)
    assert isinstance(output, BaseModelOutputWithPoolingAndNoAttention)
    assert output.last_hidden_state.shape == (2, 8, 16, 16)
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean(dim=(2, 3)))
    assert len(output.hidden_states) == 3
    assert not hasattr(trunk, "fc")


def test_auto_classes_resolve_without_remote_code(tiny_config):
    config = AutoConfig.for_model("modular_resnet", layers=[1], widths=[4])
    assert type(config) is ModularResNetConfig
    assert type(AutoModel.from_config(tiny_config)) is ModularResNetModel
    assert type(AutoModelForImageClassification.from_config(tiny_config)) is ModularResNetForImageClassification


def test_auto_classes_load_a_saved_directory(tmp_path, tiny_config):
    ModularResNetForImageClassification(tiny_config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in saved  # nothing for trust_remote_code to fetch: the classes come from the registry
    assert saved["architectures"] == ["ModularResNetForImageClassification"]
    assert type(AutoConfig.from_pretrained(tmp_path)) is ModularResNetConfig
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is ModularResNetForImageClassification
    assert type(AutoModel.from_pretrained(tmp_path)) is ModularResNetModel


def test_shortcut_a_subsamples_and_pads_channels_on_both_sides():
    x = torch.randn(2, 4, 8, 8)
    expected = torch.zeros(2, 8, 4, 4)
    expected[:, 2:6] = x[:, :, ::2, ::2]
    assert torch.equal(ShortcutA(4, 8, stride=2)(x), expected)
    assert list(ShortcutA(4, 8, stride=2).parameters()) == []


def test_option_a_block_matches_hand_computation(tiny_config, randomize):
    model = randomize(ModularResNetForImageClassification(tiny_config)).eval()
    block = model.layer2[0]  # 4 -> 8 channels, stride 2: the shortcut changes shape
    assert isinstance(block.downsample, ShortcutA)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        shortcut = torch.zeros(2, 8, 8, 8)
        shortcut[:, 2:6] = x[:, :, ::2, ::2]
        expected = F.relu(residual + shortcut)
        torch.testing.assert_close(block(x), expected)


def test_option_b_block_uses_a_projection(tiny_config):
    config = ModularResNetConfig(**{**tiny_config.to_dict(), "shortcut": "B"})
    model = ModularResNetForImageClassification(config)
    downsample = model.layer2[0].downsample
    assert isinstance(downsample, nn.Sequential)
    assert isinstance(downsample[0], nn.Conv2d) and downsample[0].kernel_size == (1, 1)
    assert downsample[0].stride == (2, 2)
    assert isinstance(downsample[1], nn.BatchNorm2d)
    assert model.layer1[0].downsample is None  # same shape: identity
    assert "layer2.0.downsample.0.weight" in model.state_dict()


def test_masked_relu_zeroes_exactly_the_masked_positions():
    site = MaskedReLU([3, 4, 4])
    assert site.mask.dtype == torch.bool and site.mask.all()
    mask = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    site.mask.copy_(mask)
    x = torch.randn(5, 3, 4, 4)
    out = site(x)
    assert torch.equal(out[:, ~mask], torch.zeros_like(out[:, ~mask]))
    assert torch.equal(out[:, mask], F.relu(x)[:, mask])
    assert torch.equal(MaskedReLU()(x), F.relu(x))


def test_mask_in_a_model_is_a_saved_buffer_that_zeroes_the_site(tiny_config):
    config = ModularResNetConfig(**{**tiny_config.to_dict(), "mask_shapes": {"layer1.0.act1": [4, 32, 32]}})
    model = ModularResNetForImageClassification(config).eval()
    site = model.sites()["layer1.0.act1"]
    assert "layer1.0.act1.mask" in model.state_dict()
    assert site.mask.shape == (4, 32, 32) and site.mask.all()  # initialised to "keep everything"
    assert model.sites()["layer1.0.act2"].mask is None

    unmasked = ModularResNetForImageClassification(tiny_config).eval()
    unmasked.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(".mask")})
    x = _images()
    torch.testing.assert_close(model(x).logits, unmasked(x).logits)  # an all-ones mask changes nothing

    site.mask[1] = False
    site.mask[:, :5] = False
    seen = {}
    site.register_forward_hook(lambda module, args, output: seen.setdefault("out", output))
    model(x)
    assert torch.equal(seen["out"][:, ~site.mask], torch.zeros_like(seen["out"][:, ~site.mask]))
    assert (seen["out"][:, site.mask] > 0).any()


class _CountReLU(TorchFunctionMode):
    """Counts every ReLU that torch computes, however it is called."""

    RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.RELUS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("block_type", ["basic", "bottleneck"])
def test_sites_name_every_relu_in_forward_order(block_type):
    config = ModularResNetConfig(block_type=block_type, layers=[2, 1], widths=[4, 8], stem_width=4)
    model = ModularResNetForImageClassification(config).eval()
    sites = model.sites()
    per_block = 2 if block_type == "basic" else 3
    assert len(sites) == 1 + per_block * sum(config.layers)
    assert not any(type(module) is nn.ReLU for module in model.modules())

    called = []
    for name, site in sites.items():
        site.register_forward_hook(lambda module, args, output, name=name: called.append(name))
    with _CountReLU() as counter:
        model(_images(batch=1))
    assert called == list(sites)
    assert counter.count == len(sites)  # no ReLU outside a site
    assert list(sites)[:3] == ["act1", "layer1.0.act1", "layer1.0.act2"]
    assert all(model.get_submodule(name) is site for name, site in sites.items())


def test_from_pretrained_does_not_reinitialise_loaded_weights(tmp_path, tiny_config, randomize):
    config = ModularResNetConfig(**{**tiny_config.to_dict(), "mask_shapes": {"layer2.0.act2": [8, 16, 16]}})
    model = randomize(ModularResNetForImageClassification(config), seed=3)
    original = {key: value.clone() for key, value in model.state_dict().items()}
    assert not original["layer2.0.act2.mask"].all()  # randomised away from the initial all-ones
    assert (original["bn1.num_batches_tracked"] > 0).all()
    model.save_pretrained(tmp_path)

    loaded = ModularResNetForImageClassification.from_pretrained(tmp_path)
    assert not loaded.training
    state = loaded.state_dict()
    assert set(state) == set(original)
    for key, value in original.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(state[key], value), key


def test_trainer_with_gradient_checkpointing_trains_the_model(tmp_path, tiny_config, randomize):
    """transformers' own Trainer, with activation checkpointing, on the classifier as transformers knows it."""
    import dataclasses

    from transformers import Trainer, TrainingArguments

    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    switch = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"  # < 5.23

    model = randomize(ModularResNetForImageClassification(tiny_config))
    generator = torch.Generator().manual_seed(0)
    rows = [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": i % 3} for i in range(8)]
    before = [p.detach().clone() for p in model.parameters()]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        **{switch: True},
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
    )
    Trainer(model=model, args=arguments, train_dataset=rows).train()
    assert model.is_gradient_checkpointing
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, randomize):
    model = randomize(ModularResNetForImageClassification(tiny_config)).train()
    x, labels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        model(x, labels=labels).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    # A hook inside a block sees the block run once per step, twice once it is recomputed in the backward pass.
    runs = []
    model.layer1[0].conv1.register_forward_hook(lambda *_: runs.append(1))
    plain = gradients()
    assert len(runs) == 1
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b)
    assert len(runs) == 3


def test_gradient_checkpointing_switches_every_block_as_transformers_checks(tiny_config):
    """transformers' `test_gradient_checkpointing_enable_disable`: every module with the flag follows the switch."""
    model = ModularResNetForImageClassification(tiny_config)
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    flags = {n: m.gradient_checkpointing for n, m in model.named_modules() if hasattr(m, "gradient_checkpointing")}
    assert set(flags) == {name for name, _ in model.blocks()} and all(flags.values())
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    assert not any(m.gradient_checkpointing for _, m in model.blocks())
