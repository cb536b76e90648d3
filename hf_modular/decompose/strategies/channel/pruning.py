"""Physical channel removal: a ModularResNet with some channels cut out, rebuilt as a smaller network.

Which channels may go, by the ResNet's structure:

* inside a block, its inner channels (the output of `conv1`, and of `conv2` in a bottleneck) go freely: they feed
  only the block's next conv;
* on the residual stream, a stage's channels go together: every block of the stage adds into the same channels,
  the shortcut carries them, and the next stage (or the head) reads them. The stem shares stage 1's stream when
  stage 1 starts with an identity shortcut. An option-A shortcut that changes shape then maps kept channels to kept
  channels (`shortcut_index`); a 1x1 projection (option B) is sliced like any conv.

`prune` slices every tensor accordingly. On any input, the pruned network computes exactly what the full one
computes with the removed channels held at zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ....models import ModularResNetForImageClassification
from ....models.configuration_modular_resnet import WEIGHT_RECORDS


@dataclass
class ChannelSelection:
    """Kept channel indices (sorted, into the full network's channels).

    `residual[0]` is the stem's output, `residual[s]` stage s's stream. `inner[block_name]` holds one index tensor
    per inner conv output: `[conv1]` for a basic block, `[conv1, conv2]` for a bottleneck.
    """

    residual: list[torch.Tensor]
    inner: dict[str, list[torch.Tensor]]

    @classmethod
    def full(cls, model: ModularResNetForImageClassification) -> ChannelSelection:
        """Everything kept."""
        channels = model.config.full_stage_channels
        inner = {
            name: [torch.arange(conv.out_channels) for conv in block.inner_convs] for name, block in model.blocks()
        }
        return cls([torch.arange(count) for count in channels], inner)


def tied_stem(model: ModularResNetForImageClassification) -> bool:
    """Whether the stem's output and stage 1's stream are one residual stream (identity shortcut into stage 1)."""
    return getattr(model, model.stage_layers[0])[0].downsample is None


def prune(
    model: ModularResNetForImageClassification, selection: ChannelSelection
) -> ModularResNetForImageClassification:
    """A copy of `model` holding only the selected channels (its head, masks aside, is sliced to the kept stream)."""
    config = model.config
    if config.is_pruned:
        raise ValueError("This model is already pruned; prune its parent with the combined selection instead.")
    if config.mask_shapes:
        raise ValueError("Channel pruning starts from a plain classifier, not from a masked module.")
    residual = [index.sort().values for index in selection.residual]
    if tied_stem(model) and not torch.equal(residual[0], residual[1]):
        raise ValueError("Stage 1 adds the stem's output through an identity shortcut: keep the same channels in both.")
    full = config.full_stage_channels
    pruned_config = copy.deepcopy(config)
    for name in WEIGHT_RECORDS:  # they describe the full network's weights, not these
        setattr(pruned_config, name, None)
    pruned_config.stage_channels = [len(index) for index in residual]
    pruned_config.block_widths = [
        [len(selection.inner[f"{stage}.{b}"][0]) for b in range(depth)]
        for stage, depth in zip(model.stage_layers, config.layers, strict=True)
    ]
    for name, kept in selection.inner.items():
        if len({len(index) for index in kept}) != 1 or len(kept[0]) == 0:
            raise ValueError(f"Block {name}: every inner conv must keep the same, non-zero number of channels.")
    if config.shortcut == "A" and any(len(index) < count for index, count in zip(residual, full, strict=True)):
        pruned_config.shortcut_index = {
            name: _shortcut_index(residual[stage], residual[stage + 1], full[stage], full[stage + 1])
            for stage, (name, block) in _stage_starts(model)
            if block.downsample is not None
        }

    state = {}
    for key, tensor in model.state_dict().items():
        state[key] = _slice(key, tensor, model, residual, selection.inner)
    with torch.device("meta"):
        pruned = ModularResNetForImageClassification(pruned_config)
    pruned.load_state_dict(state, strict=True, assign=True)
    return pruned.eval()


def _stage_starts(model: nn.Module) -> list[tuple[int, tuple[str, nn.Module]]]:
    """(stage index from 0, (name, first block)) for each stage."""
    return [(s, (f"{stage}.0", getattr(model, stage)[0])) for s, stage in enumerate(model.stage_layers)]


def _shortcut_index(kept_in: torch.Tensor, kept_out: torch.Tensor, full_in: int, full_out: int) -> list[int]:
    """Option A pads channels on both sides: full output channel j carries input channel j - pad (if any)."""
    pad = (full_out - full_in) // 2
    position = {int(channel): i for i, channel in enumerate(kept_in)}
    return [position.get(int(channel) - pad, -1) for channel in kept_out]


def _slice(
    key: str,
    tensor: torch.Tensor,
    model: nn.Module,
    residual: list[torch.Tensor],
    inner: dict[str, list[torch.Tensor]],
) -> torch.Tensor:
    """The part of one state-dict tensor that the selection keeps."""
    if tensor.dim() == 0:  # num_batches_tracked
        return tensor.clone()
    parts = key.split(".")
    if parts[0] in ("conv1", "bn1"):  # the stem
        return tensor[residual[0]].clone()
    if parts[0] == "fc":
        return tensor[:, residual[-1]].clone() if parts[1] == "weight" else tensor.clone()
    stage = model.stage_layers.index(parts[0]) + 1
    block_index, layer = int(parts[1]), parts[2]
    kept_in = residual[stage - 1] if block_index == 0 else residual[stage]
    kept_out = residual[stage]
    kept_inner = inner[f"{parts[0]}.{parts[1]}"]
    bottleneck = len(kept_inner) == 2
    rows, columns = {
        "conv1": (kept_inner[0], kept_in),
        "bn1": (kept_inner[0], None),
        "conv2": (kept_inner[1], kept_inner[0]) if bottleneck else (kept_out, kept_inner[0]),
        "bn2": (kept_inner[1], None) if bottleneck else (kept_out, None),
        "conv3": (kept_out, kept_inner[1] if bottleneck else None),
        "bn3": (kept_out, None),
    }.get(layer, (None, None))
    if layer == "downsample":
        rows, columns = (kept_out, kept_in) if parts[3] == "0" else (kept_out, None)
    tensor = tensor[rows]
    if columns is not None and tensor.dim() == 4:
        tensor = tensor[:, columns]
    return tensor.clone()
