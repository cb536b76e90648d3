"""ModularResNet: a ResNet whose ReLUs are named, maskable *sites*, with timm's parameter names.

Layout (timm's `models/resnet.py` names, so a timm state dict loads unchanged):

    conv1 -> bn1 -> act1 [-> maxpool]             stem       (B, stem_width, H', W')
    layer1 ... layerN                             stages     each a list of blocks
        block: conv1/bn1/act1 -> conv2/bn2 [-> act2 -> conv3/bn3] -> + shortcut -> act2 (act3)
        shortcut: identity, "A" (subsample + zero-pad) or "B" (`downsample.0` 1x1 conv, `downsample.1` bn)
    global_pool -> fc                             head       (B, num_features) -> (B, num_labels)

Every ReLU is a `MaskedReLU`. The value it receives (after batch norm, and after the residual add for the last one
of a block) is what decomposition observes; a class module carries a 0/1 mask of shape (C, H, W) on some sites and
zeroes the masked positions after the ReLU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models._features import feature_take_indices  # what timm's own ResNet uses
from torch import nn
from torch.fx import _symbolic_trace as symbolic_trace
from transformers import AutoImageProcessor, PreTrainedConfig, PreTrainedModel, ResNetForImageClassification
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from ..hub import PUSH_ONLY_OPTIONS, HubMixin
from ..saving import atomic_directory
from .configuration_modular_resnet import ModularResNetConfig
from .convert import (
    CIFAR10_LABELS,
    CIFAR_CHECKPOINT_FORMAT,
    TRANSFORMERS_RESNET_FORMAT,
    config_from_timm_resnet,
    config_from_transformers_resnet,
    load_exactly,
    origin_record,
    read_cifar_checkpoint,
    tensors_from_transformers_resnet,
)
from .loading import load_checked, split_revision
from .processing import image_processor_for

# torch.fx's check for symbolic tracing alone (`is_fx_tracing`, all older torch has, also answers under torch.export).
_is_fx_symbolic_tracing = getattr(symbolic_trace, "is_fx_symbolic_tracing", symbolic_trace.is_fx_tracing)


class MaskedReLU(nn.Module):
    """ReLU with an optional boolean mask over (C, H, W): masked positions are forced to 0.

    Shapes: input and output (B, C, H, W); `mask` (C, H, W), True where the node is kept.
    """

    mask: torch.Tensor | None
    inplace = True  # as `nn.ReLU(inplace=True)` says it: timm's feature extractors then never checkpoint it alone

    def __init__(self, mask_shape: list[int] | None = None):
        super().__init__()
        if mask_shape is None:
            self.register_buffer("mask", None)
        else:
            self.register_buffer("mask", torch.ones(mask_shape, dtype=torch.bool))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        hidden_state = F.relu(hidden_state, inplace=True)  # its input is always a fresh tensor; saves memory traffic
        if self.mask is not None:  # masked_fill, not a product: a masked node is 0 even where the input was inf/nan
            hidden_state = hidden_state.masked_fill(~self.mask, 0.0)
        return hidden_state


class MaskedConv2d(nn.Conv2d):
    """`nn.Conv2d` with an optional boolean mask over its output (C, H, W), for modules whose sites are raw conv
    outputs (the paper's literal reading, `sites="conv"`). Without a mask it is a plain convolution."""

    mask: torch.Tensor | None

    def __init__(self, *args: Any, mask_shape: list[int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", None if mask_shape is None else torch.ones(mask_shape, dtype=torch.bool))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        hidden_state = super().forward(hidden_state)
        return hidden_state if self.mask is None else hidden_state.masked_fill(~self.mask, 0.0)


class ShortcutA(nn.Module):
    """He et al.'s parameter-free option-A shortcut: subsample by `stride`, zero-pad channels on both sides.

    In a pruned network the kept channels no longer line up with a pad: `index[k]` names the input channel that
    output channel k carries (-1: zeros).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, index: list[int] | None = None):
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)
        self.index = None if index is None else [in_channels if i < 0 else i for i in index]  # in_channels: a zero

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            hidden_state = hidden_state[:, :, :: self.stride, :: self.stride]
        if self.index is None:
            return F.pad(hidden_state, (0, 0, 0, 0, *self.pad))
        hidden_state = F.pad(hidden_state, (0, 0, 0, 0, 0, 1))  # one zero channel at the end
        return hidden_state[:, self.index]


def _conv_bn_shortcut(
    config: ModularResNetConfig, name: str, in_channels: int, out_channels: int, stride: int, reshapes: bool
) -> nn.Module | None:
    """The shortcut of a block whose shape changes in the full network (`reshapes`), or None for the identity."""
    if not reshapes:
        return None
    if config.shortcut == "A":
        return ShortcutA(in_channels, out_channels, stride, (config.shortcut_index or {}).get(name))
    return nn.Sequential(
        _conv(config, f"{name}.downsample.0", in_channels, out_channels, 1, stride=stride),
        nn.BatchNorm2d(out_channels),
    )


def _masked_relu(config: ModularResNetConfig, name: str) -> MaskedReLU:
    return MaskedReLU((config.mask_shapes or {}).get(name))


def _conv(
    config: ModularResNetConfig, name: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1
) -> MaskedConv2d:
    """A bias-free conv with 'same' padding, masked at its output when the config lists `name`."""
    return MaskedConv2d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=kernel // 2,
        bias=False,
        mask_shape=(config.mask_shapes or {}).get(name),
    )


class ResidualBlock(GradientCheckpointingLayer):
    """What every block tells about its structure, so no caller re-derives it.

    `conv_names[k]` feeds `act_names[k]`; the last conv feeds the residual add, whose sum enters the last ReLU.
    The inner convs (all but the last) produce channels that only the block itself reads. As transformers' layers,
    a block recomputes its forward in the backward pass once gradient checkpointing is enabled on the model.
    """

    conv_names: tuple[str, ...]
    act_names: tuple[str, ...]
    downsample: nn.Module | None

    @property
    def last_act_name(self) -> str:
        return self.act_names[-1]

    @property
    def last_conv(self) -> nn.Conv2d:
        return getattr(self, self.conv_names[-1])

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return getattr(self, f"bn{len(self.conv_names)}")

    @property
    def inner_convs(self) -> list[nn.Conv2d]:
        return [getattr(self, name) for name in self.conv_names[:-1]]


class BasicBlock(ResidualBlock):
    """Two 3x3 convs. (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride); `width` is the first
    conv's output (equal to `out_channels` unless pruned)."""

    expansion = 1
    conv_names = ("conv1", "conv2")
    act_names = ("act1", "act2")

    def __init__(
        self,
        config: ModularResNetConfig,
        name: str,
        in_channels: int,
        width: int,
        out_channels: int,
        stride: int,
        reshapes: bool,
    ):
        super().__init__()
        self.conv1 = _conv(config, f"{name}.conv1", in_channels, width, 3, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = _masked_relu(config, f"{name}.act1")
        self.conv2 = _conv(config, f"{name}.conv2", width, out_channels, 3)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = _masked_relu(config, f"{name}.act2")
        self.downsample = _conv_bn_shortcut(config, name, in_channels, out_channels, stride, reshapes)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        shortcut = hidden_state if self.downsample is None else self.downsample(hidden_state)
        hidden_state = self.act1(self.bn1(self.conv1(hidden_state)))
        hidden_state = self.bn2(self.conv2(hidden_state))
        return self.act2(hidden_state + shortcut)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (carries the stride, as in timm), 1x1 expand to 4 * width."""

    expansion = 4
    conv_names = ("conv1", "conv2", "conv3")
    act_names = ("act1", "act2", "act3")

    def __init__(
        self,
        config: ModularResNetConfig,
        name: str,
        in_channels: int,
        width: int,
        out_channels: int,
        stride: int,
        reshapes: bool,
    ):
        super().__init__()
        self.conv1 = _conv(config, f"{name}.conv1", in_channels, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = _masked_relu(config, f"{name}.act1")
        self.conv2 = _conv(config, f"{name}.conv2", width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = _masked_relu(config, f"{name}.act2")
        self.conv3 = _conv(config, f"{name}.conv3", width, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act3 = _masked_relu(config, f"{name}.act3")
        self.downsample = _conv_bn_shortcut(config, name, in_channels, out_channels, stride, reshapes)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        shortcut = hidden_state if self.downsample is None else self.downsample(hidden_state)
        hidden_state = self.act1(self.bn1(self.conv1(hidden_state)))
        hidden_state = self.act2(self.bn2(self.conv2(hidden_state)))
        hidden_state = self.bn3(self.conv3(hidden_state))
        return self.act3(hidden_state + shortcut)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


# What a Hub download takes, as opposed to what building the model takes (dtype, device_map, ...).
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")


class ModularResNetPreTrainedModel(HubMixin, PreTrainedModel):
    """Weight init and loading concerns shared by the ModularResNet models; `push_to_hub` comes from `HubMixin`."""

    config: ModularResNetConfig
    config_class = ModularResNetConfig
    base_model_prefix = "modular_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["BasicBlock", "Bottleneck"]
    supports_gradient_checkpointing = True  # each residual block is recomputed in the backward pass when enabled

    def _init_weights(self, module: nn.Module) -> None:
        # `transformers.initialization` skips tensors already loaded from a checkpoint, so this never clobbers them.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)
        if isinstance(module, (MaskedReLU, MaskedConv2d)) and module.mask is not None:
            init.ones_(module.mask)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Write `config.json`, `model.safetensors` and `preprocessor_config.json`, atomically.

        Everything is written to a temporary directory first, so a failure leaves `save_directory` as it was. With
        `push_to_hub=True` the model is then pushed, as transformers does, to `repo_id` (default: the directory's
        name) with the push options `push_to_hub` takes (`private`, `token`, `commit_message`, `create_pr`, ...).
        """
        push = kwargs.pop("push_to_hub", False)
        repo_id = kwargs.pop("repo_id", None) or Path(save_directory).resolve().name
        push_options = {key: kwargs.pop(key) for key in PUSH_ONLY_OPTIONS if key in kwargs}
        if "max_shard_size" in kwargs:  # the pushed copy is sharded like the saved one
            push_options["max_shard_size"] = kwargs["max_shard_size"]
        if not kwargs.get("is_main_process", True):
            return
        with atomic_directory(save_directory) as staging:
            super().save_pretrained(staging, *args, **kwargs)
            image_processor_for(self.config).save_pretrained(staging)
        if push:
            self.push_to_hub(repo_id, token=kwargs.get("token"), **push_options)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *args: Any, **kwargs: Any):
        """Load from a local directory or a Hub repo id (or from `config=` and `state_dict=` with None). Only
        safetensors weights load, unless the caller opts in to pickle checkpoints with `use_safetensors=False`;
        missing tensors are handled as transformers does, except a module's masks and head (see
        `hf_modular.models.loading`)."""
        return load_checked(super().from_pretrained, pretrained_model_name_or_path, *args, **kwargs)


class ModularResNetModel(ModularResNetPreTrainedModel):
    """The convolutional trunk: (B, num_channels, H, W) -> features (B, num_features, H / s, W / s), pooled (B, F)."""

    def __init__(self, config: ModularResNetConfig):
        config.validate()  # a config changed field by field since it was made is checked before a model is built
        super().__init__(config)
        channels, block_widths = config.channel_counts  # pruned counts for compact modules, else the full ones
        full = config.full_stage_channels
        if config.stem_type == "imagenet":
            self.conv1 = _conv(config, "conv1", config.num_channels, channels[0], 7, stride=2)
        else:
            self.conv1 = _conv(config, "conv1", config.num_channels, channels[0], 3)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = _masked_relu(config, "act1")
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if config.stem_type == "imagenet" else nn.Identity()

        block_cls = BLOCKS[config.block_type]
        self.stage_layers: list[str] = []
        for stage_index, depth in enumerate(config.layers):
            stage_name = f"layer{stage_index + 1}"
            blocks = []
            for block_index in range(depth):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                # Which shortcuts exist is fixed by the full network's shapes, whatever pruning left.
                reshapes = block_index == 0 and (stride > 1 or full[stage_index] != full[stage_index + 1])
                in_channels = channels[stage_index + (block_index > 0)]
                blocks.append(
                    block_cls(
                        config,
                        f"{stage_name}.{block_index}",
                        in_channels,
                        block_widths[stage_index][block_index],
                        channels[stage_index + 1],
                        stride,
                        reshapes,
                    )
                )
            self.add_module(stage_name, nn.Sequential(*blocks))
            self.stage_layers.append(stage_name)
        self.num_features = channels[-1]
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.post_init()

    def forward_features(
        self, pixel_values: torch.Tensor, hidden_states: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Stem and stages. Appends the stem's and each stage's output to `hidden_states` when given."""
        hidden_state = self.maxpool(self._stem(pixel_values))
        if hidden_states is not None:
            hidden_states.append(hidden_state)
        for stage_name in self.stage_layers:
            hidden_state = getattr(self, stage_name)(hidden_state)
            if hidden_states is not None:
                hidden_states.append(hidden_state)
        return hidden_state

    def _stem(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """conv1 -> bn1 -> act1 (before the max-pool), after checking the input's channels and a masked module's
        input size."""
        tracing = torch.jit.is_tracing() or _is_fx_symbolic_tracing()  # shapes are symbolic then
        if not tracing and (pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels):
            raise ValueError(  # as transformers' ResNet says it, rather than a convolution's shape error
                f"The pixel values are {tuple(pixel_values.shape)}, but the model takes (batch, "
                f"{self.config.num_channels}, height, width) (config.num_channels={self.config.num_channels}): "
                "prepare images with the model's image processor."
            )
        size = self.config.image_size
        if not tracing and self.config.mask_shapes and tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"This module's masks are defined on {size}x{size} inputs but got "
                f"{tuple(pixel_values.shape[-2:])}. Resize the images with the module's image processor."
            )
        return self.act1(self.bn1(self.conv1(pixel_values)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature extraction API: the outputs of the stem (index 0) and of each stage (1..S), as
        (B, C_i, H / r_i, W / r_i) maps (see `feature_info`). `indices`: which ones (an int n: the last n); returns
        `intermediates` with `intermediates_only`, else `(final features, intermediates)`."""
        if output_fmt != "NCHW":
            raise ValueError(f"Only output_fmt='NCHW' is supported, not {output_fmt!r}.")
        take, last = feature_take_indices(len(self.stage_layers) + 1, indices)
        intermediates: list[torch.Tensor] = []
        hidden_state = self._stem(x)
        if 0 in take:  # the stem's output before the max-pool, as timm's ResNets give it
            intermediates.append(hidden_state)
        hidden_state = self.maxpool(hidden_state)
        stages = self.stage_layers[:last] if stop_early else self.stage_layers
        for index, stage_name in enumerate(stages, start=1):
            hidden_state = getattr(self, stage_name)(hidden_state)
            if index in take:
                intermediates.append(hidden_state)
        return intermediates if intermediates_only else (hidden_state, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what follows the last of `indices` (and the head with `prune_head`), as timm's ResNet does for
        `features_only`: the later stages, the stem's max-pool when only the stem is kept, and the head once the
        features it reads are gone. Returns the kept indices."""
        take, last = feature_take_indices(len(self.stage_layers) + 1, indices)
        pruned_end = last < len(self.stage_layers)
        if pruned_end:  # the features now end at the last kept map
            self.num_features = self.feature_info[last]["num_chs"]
        for stage_name in self.stage_layers[last:]:
            setattr(self, stage_name, nn.Identity())
        self.stage_layers = self.stage_layers[:last]
        if last == 0:
            self.maxpool = nn.Identity()  # it follows the stem's feature map
        if (prune_head or pruned_end) and hasattr(self, "fc"):
            if hasattr(self, "reset_classifier"):  # timm's class: no head and no pooling, as timm's ResNet
                self.reset_classifier(0, "")
            else:
                self.fc = nn.Identity()
        return take

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's description of the feature maps `forward_intermediates` returns: channels, reduction, module."""
        imagenet = self.config.stem_type == "imagenet"
        reduction = 2 if imagenet else 1  # the stem conv's stride; the max-pool halves again before stage 1
        info = [{"num_chs": self.bn1.num_features, "reduction": reduction, "module": "act1"}]
        for index, stage_name in enumerate(self.stage_layers):
            reduction *= 2 if (index > 0 or imagenet) else 1
            last_block = getattr(self, stage_name)[-1]
            info.append({"num_chs": last_block.last_norm.num_features, "reduction": reduction, "module": stage_name})
        return info

    @property
    def head_hidden_size(self) -> int:
        """timm's name for the width of the features the head reads."""
        return self.num_features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for gradient checkpointing (transformers': `activation_checkpointing_enable()`): each
        residual block then keeps only its input for the backward pass and recomputes the rest."""
        arguments = {"use_reentrant": False}
        if hasattr(self, "activation_checkpointing_enable"):  # transformers' newer name for the same switch
            self.activation_checkpointing_enable(arguments) if enable else self.activation_checkpointing_disable()
        elif enable:
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs=arguments)
        else:
            self.gradient_checkpointing_disable()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (layer-wise learning-rate decay): the stem, then the stages (coarse) or blocks."""
        return {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        output_hidden_states = self._resolve(output_hidden_states, "output_hidden_states")
        hidden_states = [] if output_hidden_states else None
        last_hidden_state = self.forward_features(pixel_values, hidden_states)
        pooled = self.global_pool(last_hidden_state)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )
        return output if self._resolve(return_dict, "return_dict") else output.to_tuple()

    def _resolve(self, value: bool | None, name: str) -> bool:
        return bool(getattr(self.config, name) if value is None else value)

    def blocks(self) -> list[tuple[str, ResidualBlock]]:
        """Every residual block with its name (`"layer2.0"`), in forward order."""
        return [(f"{stage}.{i}", block) for stage in self.stage_layers for i, block in enumerate(getattr(self, stage))]

    def steps(self) -> list[nn.Module]:
        """The trunk as a list of steps, each (B, C, H, W) -> (B, C', H', W'): the stem, then every block."""
        stem = nn.Sequential(self.conv1, self.bn1, self.act1, self.maxpool)
        return [stem, *(block for _, block in self.blocks())]

    def last_site(self) -> str:
        """The ReLU feeding global average pooling and the head."""
        name, block = self.blocks()[-1]
        return f"{name}.{block.last_act_name}"

    def sites(self, kind: str = "relu") -> dict[str, MaskedReLU | MaskedConv2d]:
        """Every site by module name, in forward order: the ReLUs (`"layer2.0.act1"`, ...) for `kind="relu"`, the
        convolutions (`"layer2.0.conv1"`, `"layer2.0.downsample.0"`, ...) for `kind="conv"`."""
        site_type = {"relu": MaskedReLU, "conv": MaskedConv2d}[kind]
        return {name: module for name, module in self.named_modules() if isinstance(module, site_type)}

    def site_shapes(self, kind: str = "relu") -> dict[str, torch.Size]:
        """Every site's (C, H, W) at the config's `image_size`, read off one forward pass of a blank image."""
        shapes: dict[str, torch.Size] = {}

        def record(name: str, output: torch.Tensor) -> None:
            shapes[name] = output.shape[1:]

        handles = [
            site.register_forward_hook(lambda module, inputs, output, name=name: record(name, output))
            for name, site in self.sites(kind).items()
        ]
        size, parameter = self.config.image_size, next(self.parameters())
        try:
            with torch.inference_mode():
                self.forward_features(
                    torch.zeros(1, self.config.num_channels, size, size, device=parameter.device, dtype=parameter.dtype)
                )
        finally:
            for handle in handles:
                handle.remove()
        return shapes


class ModularResNetBackbone(BackboneMixin, ModularResNetModel):
    """The trunk as a transformers backbone, like `ResNetBackbone`: `ModularResNetBackbone.from_pretrained(path,
    out_features=["stage2", "stage3"])` (or `AutoBackbone`, from a Hub repo id) returns `BackboneOutput.feature_maps`,
    one (B, C_i, H / r_i, W / r_i) map per requested stage of `config.stage_names` ("stem": after the stem's max-pool,
    then one per stage). It loads a classifier's or a module's weights (the head is left out), masks included."""

    has_attentions = False
    _keys_to_ignore_on_load_unexpected = [r"^fc\."]  # a classifier's or module's head: not part of a backbone

    def __init__(self, config: ModularResNetConfig):
        super().__init__(config)
        # BackboneMixin's channel counts per stage name: the stem's, then each stage's output.
        self.num_features = [info["num_chs"] for info in self.feature_info]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        hidden_states: list[torch.Tensor] = []
        self.forward_features(pixel_values, hidden_states)
        feature_maps = tuple(hidden_states[index] for index in self.out_indices)
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=tuple(hidden_states) if self._resolve(output_hidden_states, "output_hidden_states") else None,
        )
        return output if self._resolve(return_dict, "return_dict") else output.to_tuple()


class ModularResNetForImageClassification(ModularResNetModel):
    """The trunk plus a linear head: (B, num_channels, H, W) -> logits (B, num_labels).

    The head is `fc`, directly beside the trunk's layers, so the state dict has exactly timm's keys. A class module
    is this model with `num_labels=2` (own class, rest) and masks on some sites.
    """

    def __init__(self, config: ModularResNetConfig):
        super().__init__(config)
        self.fc = nn.Linear(self.num_features, config.head_rows or config.num_labels)
        self.post_init()

    @classmethod
    def from_timm(cls, name_or_model: str | nn.Module, **create_kwargs: Any) -> ModularResNetForImageClassification:
        """Convert a timm ResNet (a `timm.models.resnet.ResNet`, or one of our `modular_resnet*` timm models) into
        this class, with the same weights and the same logits.

        `name_or_model` is a model or a name for `timm.create_model` (e.g. `"resnet18"`,
        `"hf-hub:timm/resnet18.a1_in1k"`), which then receives `create_kwargs` (e.g. `pretrained=True`,
        `num_classes=10`).
        """
        model = timm.create_model(name_or_model, **create_kwargs) if isinstance(name_or_model, str) else name_or_model
        if isinstance(model, ModularResNetForImageClassification):
            config = ModularResNetConfig.from_dict(model.config.to_dict())
        else:
            config = config_from_timm_resnet(model)
        converted = cls(config)
        load_exactly(converted, model.state_dict(), f"timm model {type(model).__name__}")
        return converted.train(model.training)

    @classmethod
    def from_transformers(
        cls, model_or_repo: str | os.PathLike | nn.Module, *, license: str | None = None, **load_kwargs: Any
    ) -> ModularResNetForImageClassification:
        """Convert a transformers `ResNetForImageClassification` (an object, a local directory or a Hub repo id such
        as `"microsoft/resnet-50"`, loaded with `load_kwargs`) into this class, with the same labels, weights and
        logits, ready to decompose. The image processor's mean, std and input size come along when the source has one.
        `config.origin` names the directory or repo (with the commit it was downloaded at) and `license`.
        """
        source = model_or_repo
        if isinstance(model_or_repo, (str, os.PathLike)):
            hub = {key: load_kwargs[key] for key in HUB_KWARGS if key in load_kwargs}  # not dtype, device_map, ...
            model_type = PreTrainedConfig.get_config_dict(model_or_repo, **hub)[0].get("model_type")
            if model_type != "resnet":  # before transformers loads another model's weights into a ResNet
                raise TypeError(
                    f"from_transformers converts transformers' ResNetForImageClassification; {model_or_repo} is a "
                    f"{model_type!r} model."
                )
            source = ResNetForImageClassification.from_pretrained(model_or_repo, **load_kwargs)
        config = config_from_transformers_resnet(source)
        if isinstance(model_or_repo, (str, os.PathLike)):
            try:
                processor = AutoImageProcessor.from_pretrained(model_or_repo, **hub)
                config.image_mean, config.image_std = list(processor.image_mean), list(processor.image_std)
                size = dict(processor.size or {})  # a fine-tune may use another input size than 224
                config.image_size = int(size.get("shortest_edge") or size.get("height") or config.image_size)
            except (OSError, ValueError, AttributeError, TypeError):  # no processor saved: ImageNet's, as configured
                pass
        name = str(model_or_repo) if isinstance(model_or_repo, (str, os.PathLike)) else source.config.name_or_path
        if name or license:  # an object built in memory has no name to record
            commit = None if not name or Path(name).is_dir() else getattr(source.config, "_commit_hash", None)
            config.origin = origin_record(
                name or "a ResNetForImageClassification object", TRANSFORMERS_RESNET_FORMAT, revision=commit,
                license=license,
            )  # fmt: skip
        converted = cls(config)
        load_exactly(converted, tensors_from_transformers_resnet(source.state_dict()), "transformers ResNet")
        return converted.train(source.training)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> logits (B, num_labels), or pooled features (B, num_features)."""
        pooled = self.global_pool(features)
        return pooled if pre_logits else head_logits(self.fc(pooled), self.config.head_type)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, as the model's image processor returns them.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`; when given, the output carries the cross-entropy loss.
        """
        output_hidden_states = self._resolve(output_hidden_states, "output_hidden_states")
        hidden_states = [] if output_hidden_states else None
        logits = self.forward_head(self.forward_features(pixel_values, hidden_states))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        output = ImageClassifierOutputWithNoAttention(
            loss=loss,
            logits=logits,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )
        return output if self._resolve(return_dict, "return_dict") else output.to_tuple()


def head_logits(rows: torch.Tensor, head_type: str) -> torch.Tensor:
    """The head's rows (B, R) -> logits (B, num_labels). A `"softmax"` head (own class first) answers
    (own, log-sum-exp of the rest), so softmax over the two is the parent's softmax probability of the class."""
    if head_type == "softmax":
        return torch.stack([rows[:, 0], rows[:, 1:].logsumexp(dim=1)], dim=1)
    return rows


def import_cifar_resnet(
    checkpoint: str | os.PathLike,
    *,
    labels: list[str] | tuple[str, ...] = CIFAR10_LABELS,
    license: str | None = None,
) -> ModularResNetForImageClassification:
    """Import a CIFAR ResNet checkpoint in the layout of akamaster/pytorch_resnet_cifar10.

    The file is a torch pickle (`{"state_dict": ..., "best_prec1": ...}`, keys prefixed `module.`, head named
    `linear`). It is read with `torch.load(weights_only=True)`, which refuses arbitrary objects, and becomes an
    option-A ModularResNet-(6n+2) whose depth is read from the keys. `config.origin` records the file's name and
    sha256, and `license` (a Hub license id, e.g. `"bsd-2-clause"`): the weights' own, for the cards.
    """
    config, state_dict = read_cifar_checkpoint(checkpoint, labels=labels)
    config.origin = origin_record(checkpoint, CIFAR_CHECKPOINT_FORMAT, license=license)
    model = ModularResNetForImageClassification(config)
    load_exactly(model, state_dict, str(checkpoint))
    return model.eval()


def load_module(path_or_repo: str | os.PathLike, **kwargs: Any) -> ModularResNetForImageClassification:
    """Load a class module (local directory, Hub repo id, or `"org/name@revision"` as `hf-modular push` prints it);
    `kwargs` go to `from_pretrained` (e.g. `revision`).

    Raises ValueError when the checkpoint is a plain classifier rather than a module.
    """
    source, revision = split_revision(str(path_or_repo), kwargs.pop("revision", None))
    if revision is not None:
        kwargs["revision"] = revision
    model = ModularResNetForImageClassification.from_pretrained(source, **kwargs)
    if not model.config.is_module:
        raise ValueError(
            f"{path_or_repo} is a plain classifier, not a class module (its config has no `module` section). "
            "Decompose it first: hf_modular.decompose(model, dataset)."
        )
    return model


# The plain name, for users who think of it as "the model".
ModularResNet = ModularResNetForImageClassification

__all__ = [
    "MaskedReLU",
    "import_cifar_resnet",
    "load_module",
    "ModularResNet",
    "ModularResNetBackbone",
    "ModularResNetForImageClassification",
    "ModularResNetModel",
    "ModularResNetPreTrainedModel",
]
