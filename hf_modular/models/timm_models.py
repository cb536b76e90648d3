"""timm registry entries: `timm.create_model("modular_resnet20", num_classes=10)` after `import hf_modular`.

Each preset is a one-line `@register_model` entry point built through timm's `build_model_with_cfg`, so timm's own
machinery (pretrained configs, `hf-hub:` and `local-dir:` loading, `num_classes`/`in_chans` overrides) applies. The
network is `ModularResNetForImageClassification` itself, constructed from timm-style keyword arguments and
returning plain logits, so the state dict is the same one transformers saves.
"""

# No `from __future__ import annotations`: torch.fx copies `forward`'s annotations into the code it generates, which
# TorchScript must then resolve (timm's `test_model_forward_fx_torchscript`).
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .configuration_modular_resnet import ARCHITECTURE_FIELDS, PRESETS, ModularResNetConfig
from .modeling_modular_resnet import ModularResNetForImageClassification, head_logits
from .processing import IMAGENET_CROP_PCT


class TimmModularResNet(ModularResNetForImageClassification):
    """`ModularResNetForImageClassification` with timm's constructor and call conventions.

    `forward(x)` returns logits (B, num_classes) rather than a transformers output object. timm's training options
    are taken as its ResNet takes them: `drop_rate` (dropout before the classifier, in training only) and
    `global_pool` ("avg", or "" for no pooling without a classifier); `drop_path_rate` and `drop_block_rate` are
    accepted when they ask for nothing (0 or None), which timm's training script passes by default. `device` and
    `dtype` place the model as timm's `create_model(..., device=, dtype=)` asks.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        preset: str | None = None,
        img_size: int | None = None,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        drop_path_rate: float | None = None,
        drop_block_rate: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **architecture: Any,
    ):
        unknown = set(architecture) - set(ARCHITECTURE_FIELDS) - {"image_mean", "image_std"}
        if unknown:
            raise TypeError(f"Unknown ModularResNet arguments for timm: {sorted(unknown)}.")
        for name, rate, what in (
            ("drop_path_rate", drop_path_rate, "stochastic depth"),
            ("drop_block_rate", drop_block_rate, "DropBlock"),
        ):
            if rate:  # a class module's masks are of the network as it is: no block or region is dropped
                raise ValueError(f"ModularResNet has no {what}: {name} must be 0 or None, not {rate}.")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}.")
        fields = {**(PRESETS[preset] if preset else {}), **architecture}
        if in_chans != 3 and "image_mean" not in fields:  # the config's defaults are RGB's
            fields["image_mean"], fields["image_std"] = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
        if len(fields.get("image_mean", ())) not in (0, in_chans):  # e.g. in_chans=1 on an RGB preset
            fields["image_mean"] = [sum(fields["image_mean"]) / len(fields["image_mean"])] * in_chans
            fields["image_std"] = [sum(fields["image_std"]) / len(fields["image_std"])] * in_chans
        fields["num_channels"] = in_chans
        if fields.get("head_type") == "softmax" and num_classes != 2:  # another head asked for: a fresh linear one
            fields["head_type"], fields["head_rows"] = "linear", None
        if img_size is not None:  # timm passes the pretrained config's input size for fixed-size models
            fields["image_size"] = img_size if isinstance(img_size, int) else int(img_size[-1])
        super().__init__(ModularResNetConfig(num_labels=max(num_classes, 1), preset=preset, **fields))
        self.loss_type = "ForImageClassification"  # transformers reads it from the class name, which lacks it here
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        if num_classes == 0:  # timm's convention: no classifier, the model returns pooled features
            self.fc = nn.Identity()
        self._set_global_pool(global_pool)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(pixel_values))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> logits (B, num_classes), or the pooled features (B, num_features) after
        `drop_rate`'s dropout (features as they are without pooling: `global_pool=""`)."""
        pooled = self.global_pool(features)
        if self.drop_rate:
            pooled = F.dropout(pooled, p=self.drop_rate, training=self.training)
        return pooled if pre_logits else head_logits(self.fc(pooled), self.config.head_type)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head of `num_classes` outputs (0: none); the config follows, so a save reloads. `global_pool`:
        "avg", or "" (no pooling: the features map, with `num_classes=0` only); None keeps the model's, except that
        a classifier asked for on unpooled features pools them by average again (as timm's ResNet takes it)."""
        pool = self._pool if global_pool is None else global_pool
        if global_pool is None and not pool and num_classes > 0:  # a classifier reads pooled features
            pool = "avg"
        _check_pool(pool, num_classes)  # before anything changes
        self.num_classes = num_classes
        weight = next(self.parameters())  # the new head is made where the model is, in its dtype
        self.fc = (
            nn.Linear(self.num_features, num_classes, device=weight.device, dtype=weight.dtype)
            if num_classes > 0
            else nn.Identity()
        ).train(self.training)
        self.config.head_type, self.config.head_rows = "linear", None
        if num_classes > 0:
            self.config.num_labels = num_classes  # resets id2label/label2id to LABEL_i names
        self._set_global_pool(pool)

    def _set_global_pool(self, pool: str) -> None:
        _check_pool(pool, self.num_classes)
        self._pool = pool
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)) if pool else nn.Identity()


class UnsupportedPoolError(ValueError, AssertionError):
    """A `global_pool` a ModularResNet does not take. A ValueError, and an AssertionError as timm's own pooling layers
    raise for a pool type they lack (timm's tests skip a model on it)."""


def _check_pool(pool: str, num_classes: int) -> None:
    """timm's `global_pool` values a ModularResNet takes: "avg", and "" without a classifier."""
    if pool not in ("avg", ""):
        raise UnsupportedPoolError(
            f"ModularResNet pools by average (global_pool='avg'), or not at all (''), not {pool!r}."
        )
    if pool == "" and num_classes > 0:  # a linear classifier needs pooled (B, num_features) features
        raise ValueError("global_pool='' leaves the features unpooled: only without a classifier (num_classes=0).")


def _cfg(preset: str) -> dict[str, Any]:
    fields = PRESETS[preset]
    size = fields["image_size"]
    cifar = fields["stem_type"] == "cifar"
    return {
        "num_classes": 10 if cifar else 1000,
        "input_size": (3, size, size),
        "fixed_input_size": True,
        "pool_size": (size // 2 ** (len(fields["layers"]) - 1),) * 2 if cifar else (7, 7),
        "crop_pct": 1.0 if cifar else IMAGENET_CROP_PCT,
        "interpolation": "bilinear",
        "mean": tuple(fields["image_mean"]),
        "std": tuple(fields["image_std"]),
        "first_conv": "conv1",
        "classifier": "fc",
    }


default_cfgs = generate_default_cfgs(
    {preset: _cfg(preset) for preset in PRESETS} | {"modular_resnet": _cfg("modular_resnet20")}
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    if variant in PRESETS:
        kwargs.setdefault("preset", variant)
    layers = kwargs.get("layers") or PRESETS[kwargs.get("preset") or "modular_resnet20"]["layers"]
    # `features_only=True`: timm's FeatureListNet, as for its own ResNet (it runs the modules `feature_info` names,
    # stem to last stage, and takes `set_grad_checkpointing`); every level (stem, stages) by default.
    feature_cfg = {"out_indices": tuple(range(len(layers) + 1))}
    return build_model_with_cfg(TimmModularResNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


@register_model
def modular_resnet(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    """Any ModularResNet shape, given as config fields (`layers`, `widths`, `block_type`, ...)."""
    return _create("modular_resnet", pretrained, **kwargs)


@register_model
def modular_resnet20(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet20", pretrained, **kwargs)


@register_model
def modular_resnet32(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet32", pretrained, **kwargs)


@register_model
def modular_resnet44(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet44", pretrained, **kwargs)


@register_model
def modular_resnet56(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet56", pretrained, **kwargs)


@register_model
def modular_resnet110(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet110", pretrained, **kwargs)


@register_model
def modular_resnet18(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet18", pretrained, **kwargs)


@register_model
def modular_resnet34(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet34", pretrained, **kwargs)


@register_model
def modular_resnet50(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet50", pretrained, **kwargs)


@register_model
def modular_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet18_cifar", pretrained, **kwargs)


@register_model
def modular_resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet34_cifar", pretrained, **kwargs)


@register_model
def modular_resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> TimmModularResNet:
    return _create("modular_resnet50_cifar", pretrained, **kwargs)
