"""The paper's strategy (`strategy="activation"`): Pan & Rajan, ICSE 2022, as specified in the method document.

For module m of class c:
1. Concern + tangling identification: a site node joins the map (is masked) when it was <= 0 for every own-class
   input and every negative input observed by the statistics pass.
2. Channeling: the n-way head becomes 2-way. Row 0 (own class) keeps class c's weights and bias; row 1 (rest) is
   the mean of the other classes' weights and biases.
3. MC-BLN: features that only argue for one side of the channeled head by at least `delta` are removed, i.e. their
   whole channel at the last site (the one feeding global average pooling) is masked. The paper's text and its
   pseudocode disagree on which side; `backtrack` picks the reading.
4. MC-BI (optional): walk back through each convolution; an input node is masked when no kept node consumes it
   (through the convs and the shortcuts that read it).

Sites (`sites`, a [choice] of the method document): `"relu"` (default) observes the value entering each ReLU, after
batch norm and after the residual add, so a masked node is one that was <= 0 and masking it changes nothing for the
observed inputs. `"conv"` observes raw convolution outputs, as the paper literally does (its ResNets had no batch
norm), and masks them there.

Residual consistency: with `"relu"` sites it holds by construction, because the node after a residual add is one
node shared by both branches. With `"conv"` sites, a node removed from either input of an add (the block's last conv,
or its projection shortcut) is removed from the add's output too, so it is gone from both branches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import datasets
import torch
from torch import nn

from ...distributed import DistributedState
from ...models import ModularResNetForImageClassification, ShortcutA
from ...module import ModuleDescription, ModuleProvenance, jaccard_index, masked_fraction
from ...validation import check_number
from ..build import build_module
from ..heads import HEAD_DESCRIPTIONS, HEADS, channel_head, module_head
from ..sampling import SamplePlan
from ..statistics import ActivityMaps, collect_activity
from .base import BuiltModule, Strategy, register_strategy

BACKTRACK_READINGS = ("text", "pseudocode", "none")
SITE_KINDS = ("relu", "conv")


@dataclass
class ModuleSpec:
    """A strategy's decision for one class: the site nodes to keep and the binary head.

    Attributes:
        class_index: the parent's index of the module's class.
        keep: site name (a ReLU or conv module) -> (C, H, W) bool, True where the node is kept; installed as masks.
        node_keep: the same decision at the ReLU sites (where it is measured: masked fraction, Jaccard index).
        head_weight: (R, num_features): row 0 own class; the rest as `head_type` says (see `decompose.heads`).
        head_bias: (R,).
        head_type: the module config's `head_type`: "linear" (the channeled head) or "softmax".
        details: numbers worth recording (e.g. features removed by backtracking).
    """

    class_index: int
    keep: dict[str, torch.Tensor]
    node_keep: dict[str, torch.Tensor]
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    head_type: str = "linear"
    details: dict[str, Any] = field(default_factory=dict)


@register_strategy
@dataclass
class ActivationStrategy(Strategy):
    """Options of the paper's method; see the module docstring."""

    sites: str = field(
        default="relu",
        metadata={"help": "observe the values entering each ReLU, or raw conv outputs", "choices": SITE_KINDS},
    )
    backtrack: str = field(
        default="text",
        metadata={
            "help": "MC-BLN reading: 'text' removes a feature that only argues 'not my class', 'pseudocode' is "
            "Algorithm 2's literal test, 'none' skips backtracking",
            "choices": BACKTRACK_READINGS,
        },
    )
    delta: float = field(default=0.5, metadata={"help": "MC-BLN threshold on the channeled head's weights"})
    backtrack_input: bool = field(
        default=False, metadata={"help": "also run MC-BI, backtracking the maps through every conv (ReLU sites)"}
    )
    head: str = field(
        default="softmax",
        metadata={
            "help": "the module's head: 'softmax' answers the parent's probability of the class; 'channeled' is the "
            "paper's own row against the mean of the others",
            "choices": HEADS,
        },
    )
    name: ClassVar[str] = "activation"
    headline: ClassVar[str] = "jaccard_index"
    headline_format: ClassVar[str] = "mean Jaccard {:.3f}"
    supports_continuous_learning: ClassVar[bool] = True

    def __post_init__(self):
        if self.backtrack not in BACKTRACK_READINGS:
            raise ValueError(f"backtrack={self.backtrack!r} is not one of {BACKTRACK_READINGS}.")
        if self.sites not in SITE_KINDS:
            raise ValueError(f"sites={self.sites!r} is not one of {SITE_KINDS}.")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not one of {HEADS}.")
        check_number("delta", self.delta, minimum=0)
        if self.sites == "conv" and self.backtrack_input:
            raise ValueError("backtrack_input (MC-BI) walks ReLU sites; use it with sites='relu'.")

    def observe(
        self,
        parent: ModularResNetForImageClassification,
        dataset: datasets.Dataset,
        plan: SamplePlan,
        *,
        image_column: str,
        label_column: str,
        batch_size: int,
        state: DistributedState,
        progress: bool,
        num_workers: int = 0,
    ) -> ActivityMaps:
        return collect_activity(
            parent,
            dataset,
            plan,
            image_column=image_column,
            label_column=label_column,
            batch_size=batch_size,
            state=state,
            sites=self.sites,
            progress=progress,
            num_workers=num_workers,
        )

    def build(
        self,
        parent: ModularResNetForImageClassification,
        observations: ActivityMaps,
        plan: SamplePlan,
        **context: Any,
    ) -> Iterator[BuiltModule]:
        for module_index, class_index in enumerate(plan.classes):
            spec = self.module_spec(parent, observations, module_index, class_index)
            details = {
                **spec.details,
                "masked_fraction": masked_fraction(spec.node_keep),
                "jaccard_index": jaccard_index(parent, spec.node_keep),
            }
            module = build_module(parent, spec.keep, spec.head_weight, spec.head_bias, head_type=spec.head_type)
            yield module, details

    @classmethod
    def describe(cls, info: ModuleProvenance) -> ModuleDescription:
        masked, jaccard = info.details["masked_fraction"], info.details["jaccard_index"]
        backtracked = (
            ""
            if info.method.parameters.get("backtrack", "text") == "none"
            else ", and the last-stage features that only argue against its class (the paper's backtracking)"
        )
        return ModuleDescription(
            summary="It follows the method of Pan & Rajan, *Decomposing Convolutional Neural Networks into Reusable "
            f"and Replaceable Modules* (ICSE 2022): it keeps the parent's weights, masks the {100 * masked:.2f}% of "
            "its nodes that stayed at or below zero on every image it was decomposed with (its class's and the "
            f"other classes' samples){backtracked}, and has a two-way head. Most masked nodes are inactive for "
            "every class, so modules of one parent share most of their masks.",
            head=HEAD_DESCRIPTIONS[info.method.parameters.get("head", "channeled")] + " It was never trained.",
            rows=[
                ("Masked nodes", f"{100 * masked:.2f}% of the ReLU-site nodes"),
                ("Jaccard index vs parent", f"{jaccard:.3f} (retained nodes and edges over the parent's)"),
            ],
            measures={"masked": f"{100 * masked:.2f}%", "Jaccard": f"{jaccard:.3f}"},
            figures={"masked_fraction": masked, "jaccard_index": jaccard},
        )

    def module_spec(
        self, parent: ModularResNetForImageClassification, activity: ActivityMaps, module_index: int, class_index: int
    ) -> ModuleSpec:
        """Module `module_index`'s masks and head, for the parent's class `class_index`."""
        observed = {
            site: activity.own[site][module_index] | activity.negative[site][module_index] for site in activity.own
        }
        head_weight, head_bias, head_type = module_head(
            parent.fc.weight.detach(), parent.fc.bias.detach(), class_index, self.head
        )
        return self.modularize(parent, observed, head_weight, head_bias, class_index, head_type)

    def modularize(
        self,
        model: ModularResNetForImageClassification,
        observed: dict[str, torch.Tensor],
        head_weight: torch.Tensor,
        head_bias: torch.Tensor,
        class_index: int,
        head_type: str,
    ) -> ModuleSpec:
        """From the nodes kept by identification (`observed`, per site of this strategy's kind) to the final masks:
        residual consistency, MC-BLN with the channeled head, and MC-BI when asked. `head_weight` and `head_bias`
        are the module's head rows, own class first."""
        keep = dict(observed)
        if self.sites == "conv":
            keep.update(_consistent_residual_outputs(model, keep))
        channeled, _ = channel_head(head_weight, head_bias, 0)  # MC-BLN reads the paper's head, whatever the module's
        # Masks are decided on the CPU (the statistics pass returns its maps there); the head is on the model's device.
        removed = backtrack_features(channeled, self.backtrack, self.delta).cpu()
        last_site = model.last_site()  # the ReLU feeding global average pooling and the head
        keep[last_site] = keep[last_site] & ~removed[:, None, None]
        details = {"features_removed_by_backtracking": int(removed.sum())}
        if self.backtrack_input:
            before = sum(int(k.sum()) for k in keep.values())
            keep = backtrack_to_input(model, keep)
            details["nodes_removed_by_input_backtracking"] = before - sum(int(k.sum()) for k in keep.values())
        node_keep = keep if self.sites == "relu" else _keep_at_relu_sites(model, keep)
        return ModuleSpec(class_index, keep, node_keep, head_weight, head_bias, head_type, details)


def _consistent_residual_outputs(
    model: ModularResNetForImageClassification, keep: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Conv sites: each add's output keeps a node only if both of its inputs' convs keep it (an identity keeps all)."""
    outputs = {}
    for name, block in model.blocks():
        kept = keep[f"{name}.{block.conv_names[-1]}"].clone()
        if f"{name}.downsample.0" in keep:
            kept &= keep[f"{name}.downsample.0"]
        outputs[f"{name}.{block.last_act_name}"] = kept
    return outputs


def _keep_at_relu_sites(
    model: ModularResNetForImageClassification, keep: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Conv-site decisions seen at the ReLU sites: a ReLU's node is gone when the conv feeding it masks it, or,
    after an add, when the add's output is masked."""
    nodes = {"act1": keep["conv1"]}
    for name, block in model.blocks():
        for conv, act in zip(block.conv_names, block.act_names, strict=True):
            source = act if act == block.last_act_name else conv
            nodes[f"{name}.{act}"] = keep[f"{name}.{source}"]
    return nodes


def backtrack_features(head_weight: torch.Tensor, reading: str, delta: float) -> torch.Tensor:
    """MC-BLN: (F,) bool, True for features the channeled head says to remove."""
    own, rest = head_weight[0], head_weight[1]
    if reading == "text":
        return (rest >= delta) & (own <= -delta)
    if reading == "pseudocode":
        return (rest <= -delta) & (own >= delta)
    return torch.zeros_like(own, dtype=torch.bool)


def backtrack_to_input(
    model: ModularResNetForImageClassification, keep: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """MC-BI: mask every site node that no kept node downstream reads.

    Walks the blocks from last to first. A block's input site is read by the block's first conv and by its
    shortcut; a node is needed when some kept output node covers it through either. The stem's site is left as is
    when a max-pool follows it (the pool's windows overlap).
    """
    keep = {site: mask.clone() for site, mask in keep.items()}
    blocks = model.blocks()
    for index in range(len(blocks) - 1, -1, -1):
        name, block = blocks[index]
        input_site = blocks[index - 1][0] + "." + blocks[index - 1][1].last_act_name if index else "act1"
        if index == 0 and not isinstance(model.maxpool, nn.Identity):
            continue
        acts = [f"{name}.{act}" for act in block.act_names]
        convs = [getattr(block, conv) for conv in block.conv_names]
        # Inside the block: conv k reads act k-1 and writes act k (the last conv writes through the residual add).
        for k in range(len(acts) - 1, 0, -1):
            keep[acts[k - 1]] &= _needed_inputs(convs[k], keep[acts[k]], keep[acts[k - 1]].shape)
        needed = _needed_inputs(convs[0], keep[acts[0]], keep[input_site].shape)
        needed |= _needed_by_shortcut(block.downsample, keep[acts[-1]], keep[input_site].shape)
        keep[input_site] &= needed
    return keep


def _needed_inputs(conv: nn.Conv2d, kept_outputs: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """(C_in, H, W) bool: input nodes inside the window of at least one kept output node of `conv`."""
    ones = torch.ones(conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size)
    reach = torch.nn.grad.conv2d_input(
        (1, *input_shape), ones, kept_outputs[None].float(), stride=conv.stride, padding=conv.padding
    )
    return reach[0] > 0


def _needed_by_shortcut(
    shortcut: nn.Module | None, kept_outputs: torch.Tensor, input_shape: torch.Size
) -> torch.Tensor:
    """(C_in, H, W) bool: input nodes that the shortcut carries into a kept node after the residual add."""
    if shortcut is None:
        return kept_outputs.clone()
    if isinstance(shortcut, ShortcutA):
        front, _ = shortcut.pad
        needed = torch.zeros(input_shape, dtype=torch.bool)
        carried = kept_outputs[front : front + input_shape[0]]
        needed[:, :: shortcut.stride, :: shortcut.stride] = carried
        return needed
    return _needed_inputs(shortcut[0], kept_outputs, input_shape)
