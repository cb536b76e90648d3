"""Compact modules (`strategy="channel"`): per class, remove the channels the class does not need, physically.

The paper's modules are full-size masked copies of the parent. Here each module is a smaller network:

1. Scoring (`importance.py`, the statistics pass, data-parallel with Accelerate): for module m of class c and each
   channel k of a prunable site, the first-order Taylor estimate of what removing the channel does to the parent's
   decision "class c or not", over m's own and negative inputs: mean over inputs of
   (sum over positions of a * d s_c / d a)^2, where a is the channel's activation and s_c the log-odds of class c
   (Molchanov et al., CVPR 2019). `importance="activation"` scores by mean activation instead.
2. Removal (`pruning.py`): from `prune_from` on (default: the last block), each block keeps its `keep` best
   inner channels; with `keep_residual < 1` each stage pruned whole also keeps only that share of its residual
   stream, chosen by the summed scores of every site on it. Earlier blocks are the parent's: modules of one parent
   share them, and a composition runs them once (`hf_modular.compose.execution`).
3. Recovery (`recovery.py`): each pruned block's output conv is refitted by least squares to reproduce the
   parent's block output (`reconstruct`), then the pruned part is trained for `distill_steps` steps so that the
   module's own-class probability matches the parent's probability of class c on unlabeled training images (binary
   cross-entropy with the parent's probability as the target), each image seen also mirrored (`mirror`). Modules'
   scores stay calibrated like the parent's, so they compose by the same vote. The frozen prefix is computed once
   for all modules. Classes are split across processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import datasets
import torch
from torch import nn

from ....console import progress_bar
from ....distributed import DistributedState, device_and_dtype, gather_in_order
from ....models import ModularResNetForImageClassification
from ....module import ModuleDescription, ModuleProvenance, count_macs, count_parameters
from ...heads import HEAD_DESCRIPTIONS, HEADS, module_head
from ...sampling import SamplePlan
from ..base import BuiltModule, Strategy, register_strategy
from .importance import IMPORTANCE, collect_channel_scores
from .pruning import ChannelSelection, prune, tied_stem
from .recovery import distill, distillation_data, rebuild, reconstruct


@register_strategy
@dataclass
class ChannelStrategy(Strategy):
    """Options of `strategy="channel"`; see the module docstring."""

    keep: float = field(default=0.25, metadata={"help": "share of inner channels each pruned block keeps"})
    keep_residual: float = field(
        default=1.0, metadata={"help": "share of the residual stream's channels kept in stages pruned whole"}
    )
    prune_from: str | None = field(
        default=None,
        metadata={"help": "first pruned step: 'stem', a stage (layer3) or a block (layer3.1); default: the last block"},
    )
    importance: str = field(default="taylor", metadata={"help": "how channels are scored", "choices": IMPORTANCE})
    reconstruct: bool = field(default=True, metadata={"help": "refit each pruned block's output conv by least squares"})
    reconstruction_images: int = field(default=1000, metadata={"help": "images for the least-squares refit"})
    distill_steps: int = field(default=300, metadata={"help": "recovery steps per module (0: none)"})
    distill_images: int = field(default=10_000, metadata={"help": "unlabeled training images for recovery"})
    distill_batch_size: int = field(default=128, metadata={"help": "batch size of the recovery steps"})
    learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the recovery steps"})
    mirror: bool = field(default=True, metadata={"help": "recover on each image and its mirror image"})
    head: str = field(
        default="softmax",
        metadata={"help": "the module's head, as for the activation strategy", "choices": HEADS},
    )
    name: ClassVar[str] = "channel"
    headline: ClassVar[str] = "macs_fraction"
    headline_format: ClassVar[str] = "mean {:.1%} of the parent's multiply-accumulates"

    def __post_init__(self):
        if not 0 < self.keep <= 1 or not 0 < self.keep_residual <= 1:
            raise ValueError(
                f"keep and keep_residual are shares of channels in (0, 1]; got {self.keep}, {self.keep_residual}."
            )
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not one of {HEADS}.")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {IMPORTANCE}, got {self.importance!r}.")
        if self.distill_steps < 0:
            raise ValueError("distill_steps must be >= 0 (0: no recovery).")
        if min(self.distill_images, self.reconstruction_images, self.distill_batch_size) < 1 or self.learning_rate <= 0:
            raise ValueError(
                "distill_images, reconstruction_images and distill_batch_size must be >= 1 and learning_rate > 0; "
                f"got {self.distill_images}, {self.reconstruction_images}, {self.distill_batch_size}, "
                f"{self.learning_rate} (distill_steps=0 and reconstruct=False turn recovery off)."
            )

    def first_block(self, model: ModularResNetForImageClassification) -> int:
        """Index into `model.blocks()` of the first pruned block. `prune_from` names a stage (`"layer3"`, its first
        block), a block (`"layer3.1"`), or `"stem"` (every block; the stem's channels too with `keep_residual < 1`);
        `None`: the last block, where pruning costs least accuracy (measured on CIFAR-10: README)."""
        names = [name for name, _ in model.blocks()]
        prune_from = self.prune_from or names[-1]
        if prune_from == "stem":
            return 0
        if prune_from in model.stage_layers:
            prune_from = f"{prune_from}.0"
        if prune_from not in names:
            raise ValueError(
                f"prune_from={prune_from!r}: choose 'stem', a stage ({', '.join(model.stage_layers)}) or a block "
                f"({names[0]} ... {names[-1]})."
            )
        return names.index(prune_from)

    def pruned_streams(self, model: ModularResNetForImageClassification) -> list[int]:
        """Stages (1-based; 0 is the stem) whose residual stream is pruned: with `keep_residual < 1`, every stage
        pruned whole, and the stem with stage 1 when they share a stream (or when pruning from the stem)."""
        if self.keep_residual >= 1:
            return []
        first = self.first_block(model)
        layers = model.config.layers
        streams = [stage + 1 for stage in range(len(layers)) if sum(layers[:stage]) >= first]
        if not streams:
            raise ValueError(
                f"keep_residual={self.keep_residual} prunes the residual stream of stages pruned whole, and "
                f"prune_from={self.prune_from!r} starts inside the last stage. Prune from a stage "
                f"(e.g. {model.stage_layers[-1]!r}) or from 'stem', or keep keep_residual=1."
            )
        if 1 in streams and (tied_stem(model) or self.prune_from == "stem"):
            streams.insert(0, 0)
        return streams

    def scored_sites(self, model: ModularResNetForImageClassification) -> dict[str, list[str]]:
        """The ReLU sites to score: per pruned block its inner ReLUs, and per pruned stream s (key "stream:<s>")
        the sites on it."""
        first = self.first_block(model)
        streams = self.pruned_streams(model)
        sites: dict[str, list[str]] = {}
        for position, (name, block) in enumerate(model.blocks()):
            if position < first:
                continue
            sites[name] = [f"{name}.{act}" for act in block.act_names[:-1]]  # the ReLUs after the inner convs
            stage = model.stage_layers.index(name.split(".")[0]) + 1
            if stage in streams:
                sites.setdefault(f"stream:{stage}", []).append(f"{name}.{block.last_act_name}")
        if 0 in streams:
            key = "stream:1" if tied_stem(model) else "stream:0"
            sites.setdefault(key, []).append("act1")  # the stem's output
        return sites

    def shared_steps(self, model: ModularResNetForImageClassification) -> int:
        """How many leading steps (the stem, then blocks) every module keeps from the parent unchanged."""
        if self.prune_from == "stem" or 0 in self.pruned_streams(model):
            return 0
        return 1 + self.first_block(model)

    def select(
        self, model: ModularResNetForImageClassification, scores: dict[str, torch.Tensor], module: int
    ) -> ChannelSelection:
        """Module `module`'s kept channels: the best-scored ones under the budget, in pruned stages only."""
        selection = ChannelSelection.full(model)
        for key, names in self.scored_sites(model).items():
            if key.startswith("stream:"):
                stage = int(key.split(":")[1])
                total = sum(scores[name][module] for name in names)
                kept = _top(total, self.keep_residual)
                selection.residual[stage] = kept
                if stage == 1 and tied_stem(model):
                    selection.residual[0] = kept
            else:
                selection.inner[key] = [_top(scores[name][module], self.keep) for name in names]
        return selection

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
    ) -> dict[str, torch.Tensor]:
        """Per scored site, (M, C) channel scores for the plan's M modules."""
        sites = sorted({site for names in self.scored_sites(parent).values() for site in names})
        return collect_channel_scores(
            parent,
            dataset,
            plan,
            sites,
            importance=self.importance,
            image_column=image_column,
            label_column=label_column,
            batch_size=batch_size,
            state=state,
            progress=progress,
            num_workers=num_workers,
        )

    def build(
        self,
        parent: ModularResNetForImageClassification,
        observations: dict[str, torch.Tensor],
        plan: SamplePlan,
        *,
        dataset: datasets.Dataset,
        image_column: str,
        seed: int,
        state: DistributedState,
        progress: bool,
        **context: Any,
    ) -> Iterator[BuiltModule]:
        return build_compact_modules(
            parent, self, observations, plan.classes, dataset, image_column, seed=seed, state=state, progress=progress
        )

    @classmethod
    def describe(cls, info: ModuleProvenance) -> ModuleDescription:
        details = info.details
        parameters, macs, shared = details["parameters_fraction"], details["macs_fraction"], details["shared_steps"]
        distilled = "distillation_loss" in details
        summary = (
            "It is a **compact module**: the channels this class needs least were removed physically, so it holds "
            f"{100 * parameters:.1f}% of the parent's parameters and costs {100 * macs:.1f}% of its "
            "multiply-accumulates per image"
        )
        if shared:
            summary += (
                f"; its first {shared} steps (stem and blocks) are the parent's unchanged, so a composition of this "
                "parent's modules runs them once"
            )
        summary += "." + (
            " Its pruned part was distilled to reproduce the parent's probability of this class." * distilled
        )
        rows = [
            ("Parameters", f"{details['parameters']:,} ({100 * parameters:.1f}% of the parent's)"),
            ("Multiply-accumulates per image", f"{details['macs']:,} ({100 * macs:.1f}% of the parent's)"),
            (
                "Shared with the parent",
                f"the first {shared} steps (stem, then blocks), unchanged"
                if shared
                else "nothing: every step was pruned",
            ),
        ]
        if distilled:
            rows.append(
                (
                    "Distillation",
                    "binary cross-entropy to the parent's class probability over the last tenth of the steps: "
                    f"{details['distillation_loss']:.4f}",
                )
            )
        head = HEAD_DESCRIPTIONS[info.method.parameters.get("head", "channeled")] + (
            " It was distilled with the pruned part." if distilled else ""
        )
        return ModuleDescription(
            summary=summary,
            head=head,
            rows=rows,
            measures={"MACs": f"{100 * macs:.1f}%", "params": f"{100 * parameters:.1f}%"},
            figures={"macs_fraction": macs, "parameters_fraction": parameters},
        )


def _top(score: torch.Tensor, share: float) -> torch.Tensor:
    count = max(1, round(share * len(score)))
    return score.topk(count).indices.sort().values


def build_compact_modules(
    parent: ModularResNetForImageClassification,
    strategy: ChannelStrategy,
    scores: dict[str, torch.Tensor],
    class_indices: list[int],
    distill_dataset: datasets.Dataset,
    image_column: str,
    *,
    seed: int,
    state: DistributedState,
    progress: bool = True,
) -> Iterator[BuiltModule]:
    """Prune and (optionally) distill one module per class; yields (module, details) per class, in order, on every
    process, on the parent's device and in its dtype.

    The classes are built in rounds of one per process (process p builds the p-th class of each round) and each
    round is exchanged as soon as it is done, so that its modules can be saved before the next round starts."""
    parent = parent.eval()
    start = strategy.shared_steps(parent)
    features, teacher = (None, None)
    if strategy.distill_steps > 0 or strategy.reconstruct:
        # Without distillation only the reconstruction reads these, and it needs no more than its own share.
        count = strategy.distill_images if strategy.distill_steps > 0 else strategy.reconstruction_images
        features, teacher = distillation_data(
            parent, distill_dataset, image_column, start, count=count, mirror=strategy.mirror, seed=seed
        )
    example = torch.zeros(1, parent.config.num_channels, parent.config.image_size, parent.config.image_size)
    parent_macs, parent_parameters = count_macs(parent, example), count_parameters(parent)
    processes = state.num_processes
    disable = not progress or not state.is_local_main_process
    with progress_bar(total=len(class_indices), desc="compact modules", disable=disable) as bar:
        for first in range(0, len(class_indices), processes):
            mine = first + state.process_index
            built = {}
            if mine < len(class_indices):  # the last round may have fewer classes than processes
                built[class_indices[mine]] = _compact_module(
                    parent, strategy, scores, mine, class_indices[mine], start, features, teacher, seed
                )
            if processes > 1:  # exchanged through the CPU: each process's device is its own
                on_cpu = {k: ({n: t.cpu() for n, t in tensors.items()}, c, d) for k, (tensors, c, d) in built.items()}
                built = {k: v for part in gather_in_order(on_cpu, state) for k, v in part.items()}
            for class_index in class_indices[first : first + processes]:
                tensors, config_dict, details = built[class_index]
                module = rebuild(config_dict, tensors).to(*device_and_dtype(parent))
                macs, parameters = count_macs(module, example), count_parameters(module)
                details.update(
                    macs=macs,
                    parameters=parameters,
                    macs_fraction=macs / parent_macs,
                    parameters_fraction=parameters / parent_parameters,
                    shared_steps=start,
                )
                bar.update(1)
                yield module, details


def _compact_module(
    parent: ModularResNetForImageClassification,
    strategy: ChannelStrategy,
    scores: dict[str, torch.Tensor],
    m: int,
    class_index: int,
    start: int,
    features: torch.Tensor | None,
    teacher: torch.Tensor | None,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Module `m` (of the parent's class `class_index`): pruned, given its head, reconstructed and distilled when
    asked; as (its tensors, its config as a dict, details), which processes can exchange."""
    selection = strategy.select(parent, scores, m)
    module = prune(parent, selection)
    head_weight, head_bias, head_type = module_head(
        module.fc.weight.detach(), module.fc.bias.detach(), class_index, strategy.head
    )
    module.config.head_type, module.config.head_rows = (
        head_type,
        len(head_weight) if head_type == "softmax" else None,
    )
    device, dtype = device_and_dtype(module)
    module.fc = nn.Linear(module.fc.in_features, len(head_weight), device=device, dtype=dtype)
    with torch.no_grad():
        module.fc.weight.copy_(head_weight)
        module.fc.bias.copy_(head_bias)
    details: dict[str, Any] = {}
    if strategy.reconstruct:
        reconstruct(parent, module, selection, start, features[: strategy.reconstruction_images])
    if strategy.distill_steps > 0:
        details["distillation_loss"] = distill(
            module,
            start,
            features,
            teacher[:, class_index],
            steps=strategy.distill_steps,
            batch_size=strategy.distill_batch_size,
            learning_rate=strategy.learning_rate,
            seed=seed + class_index,
        )
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, module.config.to_dict(), details
