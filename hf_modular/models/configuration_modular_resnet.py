"""Configuration of ModularResNet: the CIFAR ResNets of He et al. and timm's ImageNet ResNets in one config.

A saved `config.json` is read by two libraries:

* transformers reads the typed fields below (`model_type="modular_resnet"`);
* timm reads `architecture`, `num_classes`, `pretrained_cfg`, `model_args` and `label_names`, which
  `to_dict()` derives from the typed fields, so `timm.create_model("hf-hub:org/repo")` rebuilds the same network.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from ..module.provenance import ModuleProvenance
from ..validation import check_number
from .processing import IMAGENET_CROP_PCT, image_processor_class, image_processor_settings

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Fields that describe the network's shape. They travel to timm as `model_args`.
ARCHITECTURE_FIELDS = (
    "block_type",
    "layers",
    "widths",
    "stem_type",
    "stem_width",
    "shortcut",
    "num_channels",
    "image_size",
    "mask_shapes",
    "stage_channels",
    "block_widths",
    "shortcut_index",
    "head_type",
    "head_rows",
)

# Keys that only timm reads from config.json; they are derived from the typed fields, so they are dropped on load.
_TIMM_KEYS = ("architecture", "num_classes", "num_features", "pretrained_cfg", "model_args", "label_names")
# transformers treats a local config.json holding `pretrained_cfg` as a timm checkpoint and builds the image processor
# from config.json itself: it names the processor's class and holds its settings (`image_mean` and `image_std` are
# the config's own fields), so AutoImageProcessor and pipelines on a saved directory resize as they should.
_PROCESSOR_KEYS = ("image_processor_type", "size", "crop_pct")
_DERIVED_KEYS = (*_TIMM_KEYS, *_PROCESSOR_KEYS)


def _cifar(blocks_per_stage: int) -> dict[str, Any]:
    """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem, three stages of 16/32/64 channels, option-A shortcuts."""
    return {
        "block_type": "basic",
        "layers": [blocks_per_stage] * 3,
        "widths": [16, 32, 64],
        "stem_type": "cifar",
        "stem_width": 16,
        "shortcut": "A",
        "image_size": 32,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }


def _imagenet(block_type: str, layers: list[int], *, cifar_stem: bool = False) -> dict[str, Any]:
    """timm's ResNet-18/34/50 layout; with `cifar_stem`, a 3x3 stride-1 stem and no max-pool for 32x32 input."""
    return {
        "block_type": block_type,
        "layers": layers,
        "widths": [64, 128, 256, 512],
        "stem_type": "cifar" if cifar_stem else "imagenet",
        "stem_width": 64,
        "shortcut": "B",
        "image_size": 32 if cifar_stem else 224,
        "image_mean": list(CIFAR_MEAN if cifar_stem else IMAGENET_MEAN),
        "image_std": list(CIFAR_STD if cifar_stem else IMAGENET_STD),
    }


# The akamaster CIFAR checkpoints were trained with ImageNet statistics, so the CIFAR presets use them too.
PRESETS: dict[str, dict[str, Any]] = {
    "modular_resnet20": _cifar(3),
    "modular_resnet32": _cifar(5),
    "modular_resnet44": _cifar(7),
    "modular_resnet56": _cifar(9),
    "modular_resnet110": _cifar(18),
    "modular_resnet18": _imagenet("basic", [2, 2, 2, 2]),
    "modular_resnet34": _imagenet("basic", [3, 4, 6, 3]),
    "modular_resnet50": _imagenet("bottleneck", [3, 4, 6, 3]),
    "modular_resnet18_cifar": _imagenet("basic", [2, 2, 2, 2], cifar_stem=True),
    "modular_resnet34_cifar": _imagenet("basic", [3, 4, 6, 3], cifar_stem=True),
    "modular_resnet50_cifar": _imagenet("bottleneck", [3, 4, 6, 3], cifar_stem=True),
}


# How a classifier's weights were made (`training`) or where they came from (`origin`): a module or a pruned copy is
# not those weights, and its own provenance names them instead.
WEIGHT_RECORDS: dict[str, None] = {"training": None, "origin": None}


@strict
class ModularResNetConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`ModularResNetForImageClassification`]: a ResNet whose every ReLU is an observable *site*
    that a class module can mask.

    Args:
        block_type (`str`, defaults to `"basic"`):
            `"basic"` (two 3x3 convs, ResNet-18/34 and the CIFAR ResNets) or `"bottleneck"` (1x1-3x3-1x1, expansion 4,
            ResNet-50 and up).
        layers (`list[int]`, defaults to `[3, 3, 3]`):
            Number of blocks in each stage. The first stage keeps the stem's resolution, each later one halves it.
        widths (`list[int]`, defaults to `[16, 32, 64]`):
            Channels of each stage's 3x3 convs (a bottleneck stage outputs 4x as many). Same length as `layers`.
        stem_type (`str`, defaults to `"cifar"`):
            `"cifar"`: one 3x3 stride-1 conv, no max-pool (32x32 input). `"imagenet"`: a 7x7 stride-2 conv and a
            3x3 stride-2 max-pool (224x224 input).
        stem_width (`int`, defaults to `16`):
            Output channels of the stem conv.
        shortcut (`str`, defaults to `"A"`):
            How a block's shortcut changes shape. `"A"`: parameter-free, stride-2 subsampling and zero-padded
            channels (He et al. on CIFAR). `"B"`: 1x1 conv + batch norm projection (timm's `downsample`).
        num_channels (`int`, defaults to `3`):
            Input channels.
        image_size (`int`, defaults to `32`):
            Height and width of the input the model was trained on; the image processor resizes to it.
        image_mean, image_std (`list[float]`):
            Per-channel normalisation applied to images scaled to [0, 1]; one number stands for every channel.
        preset (`str`, *optional*):
            Name of the preset this config was built from (`"modular_resnet20"`, ...). Also the timm architecture
            name written to `config.json`.
        mask_shapes (`dict[str, list[int]]`, *optional*):
            Sites (ReLU module names such as `"layer2.0.act1"`) that carry a 0/1 mask, with the mask's shape
            `[channels, height, width]`. Set on class modules; `None` on a plain classifier.
        stage_channels (`list[int]`, *optional*):
            Channel counts of a physically pruned network's residual streams: the stem's output, then each stage's
            output. `None`: the full counts (`stem_width`, then `widths` times the block expansion).
        block_widths (`list[list[int]]`, *optional*):
            Per stage, per block, the channels of a pruned block's inner convs (its `conv1` output, and `conv2`'s for
            a bottleneck). `None`: each stage's width.
        shortcut_index (`dict[str, list[int]]`, *optional*):
            For a pruned network with option-A shortcuts, per shape-changing block (`"layer2.0"`), which input
            channel feeds each output channel of its shortcut (`-1`: a zero channel).
        head_type (`str`, defaults to `"linear"`):
            How the logits come from the pooled features. `"linear"`: one linear layer with `num_labels` rows.
            `"softmax"` (class modules): the parent's `head_rows` rows, the module's own class first, and the module
            answers (own logit, log-sum-exp of the other rows): its own-class probability is exactly the parent's
            softmax probability of that class.
        head_rows (`int`, *optional*):
            Rows of a `"softmax"` head (the parent's number of classes). `None` for a linear head.
        module (`dict`, *optional*):
            Provenance of a class module (target class, parent, dataset, method and parameters), in the layout of
            [`~hf_modular.module.ModuleProvenance`]; read it typed through `config.provenance`. `None` on a plain
            classifier. Sections saved by older releases are upgraded on load; a malformed one is refused.
        training (`dict`, *optional*):
            How `hf_modular.train.train` made the weights: the data (name or path, split, revision, rows,
            fingerprint), the settings (epochs, batch size, learning rate, weight decay, flips, seed), precision,
            dtype, process count, the last epoch's loss and evaluation, and the weights it started from (with the
            record of their own training, if any, under `previous`). `None` for weights made elsewhere, and on class
            modules (their `module` section names the parent by its weights).
        origin (`dict`, *optional*):
            Where imported weights came from (`hf-modular import`, `import_cifar_resnet`, `from_transformers`): the
            `source` (checkpoint file name, or model directory or repo id), its `format`, the file's `sha256` or the
            repo's `revision`, the `license` when one was given, and the `hf_modular_version` that imported it. A
            parent's card shows it, and its license is the card's unless another is given. `None` otherwise.
        out_features (`list[str]`, *optional*), out_indices (`list[int]`, *optional*):
            For [`ModularResNetBackbone`] (`AutoBackbone`), as in transformers' `ResNetConfig`: which of `stage_names`
            (`"stem"`, `"stage1"`, ... one per entry of `layers`) it returns. Default: the last stage.

    Example:

    ```python
    >>> from hf_modular import ModularResNetConfig, ModularResNetForImageClassification
    >>> config = ModularResNetConfig.from_preset("modular_resnet20", num_labels=10)
    >>> model = ModularResNetForImageClassification(config)
    ```
    """

    model_type = "modular_resnet"
    block_types: ClassVar[tuple[str, ...]] = ("basic", "bottleneck")
    stem_types: ClassVar[tuple[str, ...]] = ("cifar", "imagenet")
    shortcuts: ClassVar[tuple[str, ...]] = ("A", "B")
    head_types: ClassVar[tuple[str, ...]] = ("linear", "softmax")

    block_type: str = "basic"
    layers: list[int] | tuple[int, ...] = (3, 3, 3)
    widths: list[int] | tuple[int, ...] = (16, 32, 64)
    stem_type: str = "cifar"
    stem_width: int = 16
    shortcut: str = "A"
    num_channels: int = 3
    image_size: int = 32
    image_mean: list[float] | tuple[float, ...] | float = IMAGENET_MEAN
    image_std: list[float] | tuple[float, ...] | float = IMAGENET_STD
    preset: str | None = None
    mask_shapes: dict[str, list[int]] | None = None
    stage_channels: list[int] | None = None
    block_widths: list[list[int]] | None = None
    shortcut_index: dict[str, list[int]] | None = None
    head_type: str = "linear"
    head_rows: int | None = None
    module: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    origin: dict[str, Any] | None = None

    def __post_init__(self, **kwargs):
        for key in _DERIVED_KEYS:  # derived from the typed fields; see `to_dict`
            kwargs.pop(key, None)
        # A config.json edited by hand is refused with the field's name, not with a crash in int() or deep in a model.
        for name in ("stem_width", "num_channels", "image_size"):
            check_number(f"config field `{name}`", getattr(self, name), minimum=1, integer=True)
        self.layers, self.widths = _counts("layers", self.layers), _counts("widths", self.widths)
        self.image_mean = _numbers("image_mean", self.image_mean, self.num_channels)
        self.image_std = _numbers("image_std", self.image_std, self.num_channels)
        # As transformers' ResNetConfig: the stages a backbone (`ModularResNetBackbone`, AutoBackbone) can return.
        kwargs.pop("stage_names", None)  # derived from `layers`
        self.stage_names = ["stem", *(f"stage{index}" for index in range(1, len(self.layers) + 1))]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        for name in ("training", "origin"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ValueError(
                    f"config field `{name}` must be a record (a JSON object) or null, not {getattr(self, name)!r}."
                )
        if self.module is not None:  # validated and upgraded to the current schema, so every reader sees one layout
            self.module = ModuleProvenance.from_dict(self.module).to_dict()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Reject inconsistent shapes with a message that says what to change."""
        super().validate_architecture()
        names = list((self.id2label or {}).values())
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:  # label2id would keep only one of them
            raise ValueError(
                f"id2label gives the names {duplicates} to more than one class; every class needs its own."
            )
        if self.block_type not in self.block_types:
            raise ValueError(f"block_type={self.block_type!r} is not one of {self.block_types}.")
        if self.stem_type not in self.stem_types:
            raise ValueError(f"stem_type={self.stem_type!r} is not one of {self.stem_types}.")
        if self.shortcut not in self.shortcuts:
            raise ValueError(f"shortcut={self.shortcut!r} is not one of {self.shortcuts}.")
        if len(self.layers) != len(self.widths) or not self.layers:
            raise ValueError(
                f"layers={list(self.layers)} and widths={list(self.widths)} must be non-empty lists of the same "
                "length: one block count and one width per stage."
            )
        if min(self.layers) < 1 or min(self.widths) < 1 or self.stem_width < 1:
            raise ValueError("Every stage needs at least one block, and every width must be positive.")
        if self.stage_channels is not None and len(self.stage_channels) != len(self.layers) + 1:
            raise ValueError("stage_channels needs the stem's channel count, then one per stage.")
        if self.head_type not in self.head_types:
            raise ValueError(f"head_type={self.head_type!r} is not one of {self.head_types}.")
        if (self.head_type == "softmax") != (self.head_rows is not None) or (self.head_rows or 2) < 2:
            raise ValueError(
                "A 'softmax' head needs head_rows >= 2 (the parent's class count) and a linear head none; got "
                f"head_type={self.head_type!r}, head_rows={self.head_rows!r}."
            )
        if self.head_type == "softmax" and self.num_labels != 2:
            raise ValueError(
                f"A 'softmax' head answers (own class, rest): num_labels must be 2, not {self.num_labels}. A class "
                "module keeps its two answers; for another set of classes, compose modules (ComposedModel), or "
                "fine-tune the parent its provenance names (config.provenance.parent) with a new head."
            )
        if self.block_widths is not None and [len(stage) for stage in self.block_widths] != list(self.layers):
            raise ValueError(f"block_widths needs one width per block: {list(self.layers)} blocks per stage.")
        for name in ("image_mean", "image_std"):  # also when set after construction
            setattr(self, name, _numbers(name, getattr(self, name), self.num_channels))
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError(
                f"image_mean and image_std need one value per input channel (num_channels={self.num_channels})."
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModularResNetConfig:
        """Build the config of a named architecture (see `PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
        return cls(**{**copy.deepcopy(PRESETS[name]), "preset": name, **overrides})

    @property
    def depths(self) -> list[int]:
        """transformers' name for `layers` (as `ResNetConfig.depths`): blocks per stage, one entry per stage."""
        return list(self.layers)

    @property
    def expansion(self) -> int:
        """How many times its width a block outputs: 4 for bottleneck blocks, 1 for basic ones."""
        return 4 if self.block_type == "bottleneck" else 1

    @property
    def full_stage_channels(self) -> list[int]:
        """The unpruned residual channel counts: the stem's output, then each stage's."""
        return [self.stem_width, *(width * self.expansion for width in self.widths)]

    @property
    def channel_counts(self) -> tuple[list[int], list[list[int]]]:
        """(residual channels of the stem and each stage, inner width of every block), pruned where configured."""
        stages = list(self.stage_channels or self.full_stage_channels)
        blocks = self.block_widths or [[width] * depth for width, depth in zip(self.widths, self.layers, strict=True)]
        return stages, [list(stage) for stage in blocks]

    @property
    def is_pruned(self) -> bool:
        """Whether channels were removed physically (a compact module)."""
        return self.stage_channels is not None or self.block_widths is not None

    @property
    def num_features(self) -> int:
        """Channels entering the classifier head (4x the last width for bottleneck blocks, fewer when pruned)."""
        return self.channel_counts[0][-1]

    @property
    def is_module(self) -> bool:
        """Whether this config describes a class module rather than a plain classifier."""
        return self.module is not None

    @property
    def provenance(self) -> ModuleProvenance:
        """The module's typed provenance record (a copy: assign it back to change it)."""
        if self.module is None:
            raise ValueError("This config describes a plain classifier: it has no module provenance.")
        return ModuleProvenance.from_dict(self.module)

    @provenance.setter
    def provenance(self, record: ModuleProvenance) -> None:
        self.module = record.to_dict()

    def architecture_args(self) -> dict[str, Any]:
        """The fields that determine the network's tensors, as keyword arguments for timm."""
        return {key: copy.deepcopy(getattr(self, key)) for key in ARCHITECTURE_FIELDS}

    def timm_config(self) -> dict[str, Any]:
        """The keys timm reads from `config.json` to rebuild this network with `timm.create_model`."""
        labels = [self.id2label[i] for i in range(self.num_labels)] if self.id2label else None
        pretrained_cfg = {
            "input_size": [self.num_channels, self.image_size, self.image_size],
            "fixed_input_size": True,
            "interpolation": "bilinear",
            "crop_pct": 1.0 if self.stem_type == "cifar" else IMAGENET_CROP_PCT,
            "crop_mode": "center",
            "mean": list(self.image_mean),
            "std": list(self.image_std),
            "num_classes": self.num_labels,
            "first_conv": "conv1",
            "classifier": "fc",
        }
        return {
            "architecture": self.preset if self.preset in PRESETS else "modular_resnet",
            "num_classes": self.num_labels,
            "num_features": self.num_features,
            "label_names": labels,
            # The normalisation travels too: timm's defaults are RGB's, wrong for any other channel count.
            "model_args": {
                **self.architecture_args(),
                "image_mean": list(self.image_mean),
                "image_std": list(self.image_std),
            },
            "pretrained_cfg": pretrained_cfg,
        }

    def to_dict(self) -> dict[str, Any]:
        image_processor_type = image_processor_class(self.stem_type, self.num_channels).__name__
        settings = image_processor_settings(self)
        return {**super().to_dict(), **self.timm_config(), **settings, "image_processor_type": image_processor_type}


__all__ = ["ModularResNetConfig", "PRESETS", "ARCHITECTURE_FIELDS"]


def _counts(name: str, values: Any) -> list[int]:
    """A list of whole numbers >= 1 (JSON gives ints; a tuple default is fine), or an error naming the field."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"config field `{name}` must be a list of integers >= 1, got {values!r:.60}.")
    for value in values:
        check_number(f"each entry of config field `{name}`", value, minimum=1, integer=True)
    return list(values)


def _numbers(name: str, values: Any, count: int) -> list[float]:
    """A list of numbers; one number stands for `count` of them (every channel), as transformers' processors take it."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values] * count
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"config field `{name}` must be a list of numbers, got {values!r:.60}.")
    for value in values:
        check_number(f"each entry of config field `{name}`", value)
    return [float(value) for value in values]
