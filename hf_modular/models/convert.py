"""Bring existing ResNets into ModularResNet: the config and tensors of timm ResNets and of CIFAR checkpoints from
the wild. The model classes build themselves from these (`ModularResNetForImageClassification.from_timm`,
`import_cifar_resnet`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..version import __version__
from .configuration_modular_resnet import ModularResNetConfig

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def config_from_timm_resnet(model: nn.Module) -> ModularResNetConfig:
    """The config of a `timm.models.resnet.ResNet` (ResNet-18/34/50 layouts, ImageNet or CIFAR stem)."""
    if not isinstance(model, ResNet):
        raise TypeError(
            f"from_timm converts timm ResNets; got {type(model).__name__}. Use a `timm.models.resnet.ResNet` "
            "(resnet18/34/50, ...) or a `modular_resnet*` model."
        )
    if not isinstance(model.conv1, nn.Conv2d):
        raise ValueError("This timm ResNet has a deep stem (resnet*d/c/s variants); ModularResNet does not model it.")
    stages = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
    first_block = stages[0][0]
    block_type = {BasicBlock: "basic", Bottleneck: "bottleneck"}.get(type(first_block))
    if block_type is None:
        raise ValueError(f"Unsupported timm block {type(first_block).__name__}; expected BasicBlock or Bottleneck.")
    if block_type == "bottleneck" and first_block.conv2.groups != 1:
        raise ValueError("Grouped-convolution ResNets (ResNeXt) are not supported.")
    kernel, stride = model.conv1.kernel_size[0], model.conv1.stride[0]
    imagenet_stem = kernel == 7 and stride == 2 and isinstance(model.maxpool, nn.MaxPool2d)
    cifar_stem = kernel == 3 and stride == 1 and not isinstance(model.maxpool, nn.MaxPool2d)
    if not (imagenet_stem or cifar_stem):
        raise ValueError(f"Unsupported stem: {kernel}x{kernel} conv, stride {stride}, max-pool {model.maxpool}.")
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = pretrained_cfg.get("input_size", (3, 224 if imagenet_stem else 32, 224 if imagenet_stem else 32))
    labels = pretrained_cfg.get("label_names")
    fields: dict[str, Any] = {
        "block_type": block_type,
        "layers": [len(stage) for stage in stages],
        "widths": [stage[0].conv1.out_channels for stage in stages],
        "stem_type": "imagenet" if imagenet_stem else "cifar",
        "stem_width": model.conv1.out_channels,
        "shortcut": "B",
        "num_channels": model.conv1.in_channels,
        "image_size": int(input_size[-1]),
        "num_labels": model.num_classes,
    }
    if pretrained_cfg.get("mean") is not None:
        fields["image_mean"], fields["image_std"] = list(pretrained_cfg["mean"]), list(pretrained_cfg["std"])
    if labels is not None and len(labels) == model.num_classes:
        fields["id2label"] = dict(enumerate(labels))
    return ModularResNetConfig(**fields)


def config_from_transformers_resnet(model: nn.Module) -> ModularResNetConfig:
    """The config of a transformers `ResNetForImageClassification` (the layout of microsoft/resnet-18/50 and the
    many models fine-tuned from them)."""
    from_config = getattr(model, "config", None)
    if getattr(from_config, "model_type", None) != "resnet" or not hasattr(model, "classifier"):
        raise TypeError(
            f"from_transformers converts transformers' ResNetForImageClassification; got a {type(model).__name__} "
            f"of model type {getattr(from_config, 'model_type', None)!r}."
        )
    config = from_config
    unsupported = {
        "hidden_act": config.hidden_act != "relu",
        "downsample_in_first_stage": config.downsample_in_first_stage,
        "downsample_in_bottleneck": getattr(config, "downsample_in_bottleneck", False),
    }
    if any(unsupported.values()):
        wrong = [name for name, bad in unsupported.items() if bad]
        raise ValueError(f"This ResNet sets {wrong}; ModularResNet models ReLU ResNets with the standard layout only.")
    bottleneck = config.layer_type == "bottleneck"
    return ModularResNetConfig(
        block_type="bottleneck" if bottleneck else "basic",
        layers=list(config.depths),
        widths=[size // 4 for size in config.hidden_sizes] if bottleneck else list(config.hidden_sizes),
        stem_type="imagenet",
        stem_width=config.embedding_size,
        shortcut="B",
        num_channels=config.num_channels,
        image_size=224,
        num_labels=config.num_labels,
        id2label=dict(config.id2label),
        label2id=dict(config.label2id),
    )


def tensors_from_transformers_resnet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ResNet tensor names -> ModularResNet's (timm's): `resnet.embedder.embedder.convolution` ->
    `conv1`, `resnet.encoder.stages.{s}.layers.{b}.layer.{i}` -> `layer{s+1}.{b}.conv{i+1}` / `bn{i+1}`,
    `...shortcut` -> `...downsample.0/1`, `classifier.1` -> `fc`."""
    renamed = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix("resnet.")
        name = name.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
        if name.startswith("encoder.stages."):
            _, _, stage, _, block, rest = name.split(".", 5)
            part, *tail = rest.split(".")
            if part == "shortcut":
                layer, attribute = tail[0], ".".join(tail[1:])
                layer = {"convolution": "downsample.0", "normalization": "downsample.1"}[layer]
                name = f"layer{int(stage) + 1}.{block}.{layer}.{attribute}"
            else:  # layer.{i}.convolution / layer.{i}.normalization
                index, kind, attribute = tail[0], tail[1], ".".join(tail[2:])
                layer = {"convolution": "conv", "normalization": "bn"}[kind] + str(int(index) + 1)
                name = f"layer{int(stage) + 1}.{block}.{layer}.{attribute}"
        name = name.replace("classifier.1.", "fc.")
        renamed[name] = tensor
    return renamed


def read_cifar_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    labels: list[str] | tuple[str, ...] = CIFAR10_LABELS,
) -> tuple[ModularResNetConfig, dict[str, torch.Tensor]]:
    """The config and (timm-named) tensors of a CIFAR ResNet checkpoint in the layout of
    akamaster/pytorch_resnet_cifar10.

    The file is a torch pickle (`{"state_dict": ..., "best_prec1": ...}`, keys prefixed `module.`, head named
    `linear`). It is read with `torch.load(weights_only=True)`, which refuses arbitrary objects, and becomes an
    option-A ModularResNet-(6n+2) whose depth is read from the keys.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError by corruption type
        raise ValueError(
            f"{path} is not a readable weights-only torch checkpoint ({type(error).__name__}: {error}). "
            "Only tensors and plain containers are accepted."
        ) from error
    state_dict = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    state_dict = {_timm_key(key): value for key, value in state_dict.items()}
    blocks_per_stage = len({key.split(".")[1] for key in state_dict if key.startswith("layer1.")})
    if blocks_per_stage == 0 or "fc.weight" not in state_dict:
        raise ValueError(f"{path} does not look like a CIFAR ResNet (no layer1 blocks or no linear head).")
    num_classes = state_dict["fc.weight"].shape[0]
    if len(labels) != num_classes:
        raise ValueError(f"{path} has {num_classes} outputs but {len(labels)} labels were given.")
    depth = 6 * blocks_per_stage + 2
    preset = f"modular_resnet{depth}"
    config = (
        ModularResNetConfig.from_preset(preset)
        if depth in (20, 32, 44, 56, 110)
        else ModularResNetConfig(layers=[blocks_per_stage] * 3)
    )
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: index for index, label in enumerate(labels)}
    return config, state_dict


CIFAR_CHECKPOINT_FORMAT = "CIFAR ResNet checkpoint in the akamaster/pytorch_resnet_cifar10 layout"
TRANSFORMERS_RESNET_FORMAT = "transformers ResNetForImageClassification"


def origin_record(
    source: str | os.PathLike,
    format: str,
    *,
    revision: str | None = None,
    license: str | None = None,
) -> dict[str, Any]:
    """`config.origin` for imported weights: a checkpoint file is named and hashed (its bytes, so anyone holding
    the same file can check it), a model directory or repo is named with its revision when known."""
    path = Path(source)
    record: dict[str, Any] = {"source": path.name if path.is_file() else str(source), "format": format}
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        record["sha256"] = digest.hexdigest()
    if revision:
        record["revision"] = revision
    if license:
        record["license"] = license
    record["hf_modular_version"] = __version__
    return record


def _timm_key(key: str) -> str:
    key = key.removeprefix("module.")
    return "fc." + key.removeprefix("linear.") if key.startswith("linear.") else key


def load_exactly(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    # Checkpoints from before PyTorch 0.4.1 have no batch-norm step counters; they do not affect inference.
    state_dict = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state_dict}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The tensors of {source} do not match a ModularResNet of this shape: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shape {mismatched[:3]}. "
            "The architecture is probably a variant that ModularResNet does not model."
        )
    model.load_state_dict(state_dict)


__all__ = ["CIFAR10_LABELS", "config_from_timm_resnet", "load_exactly", "read_cifar_checkpoint"]
