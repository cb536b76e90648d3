"""The statistics pass: one forward pass of the parent over the planned rows, recording at every site which nodes
were active (> 0) on some own-class input of each module and on some negative input of it.

Rows come in groups that every module uses whole or not at all (see `SamplePlan`), so each batch is reduced once
per group with `any`, however many modules there are; a module's maps are the union of its groups at the end.

Data-parallel with Accelerate: each process runs a contiguous shard of the rows (no padding, no duplicates), and
the per-group maps are combined across processes once at the end. A union of booleans does not depend on how the
rows were split, so the result is bit-identical on any number of processes on the CPU. (On GPUs, cuDNN picks its
algorithms by batch shape, so a value within rounding of 0 may fall on either side; the pass runs in the model's
dtype without TF32 to keep such values few. Under an Accelerator's mixed precision it runs in autocast, which
moves a few signs: the modules' provenance records the dtype and the mixed precision, and a resumed decomposition
reuses only modules built under the same.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import torch
from accelerate.utils import reduce

from ..console import progress_bar
from ..data import fixed_input_size, iterate_batches
from ..distributed import DistributedState, autocast, distributed_state, full_float32, to_model
from ..models import ModularResNetForImageClassification, image_mode, image_processor_for
from .sampling import SamplePlan


@dataclass
class ActivityMaps:
    """Per site (module name): bool maps of shape (M, C, H, W) for M modules.

    `own[site][m]` is True where the node was > 0 on at least one of module m's own-class inputs; `negative[site][m]`
    the same over its negative inputs. `own_samples` / `negative_samples` (M,) count the inputs observed.
    """

    own: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor]
    own_samples: torch.Tensor
    negative_samples: torch.Tensor


@torch.inference_mode()
def collect_activity(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset,
    plan: SamplePlan,
    *,
    image_column: str,
    label_column: str,
    batch_size: int = 128,
    state: DistributedState | None = None,
    sites: str = "relu",
    observe: bool = True,
    progress: bool = True,
    num_workers: int = 0,
) -> ActivityMaps | None:
    """Run `model` over `dataset.select(plan.rows)`, sharded across the processes of `state` (default: this
    process's `PartialState`).

    `sites="relu"` observes the value entering every ReLU; `sites="conv"` every convolution's raw output. With
    `observe=False` the same pass runs without recording (a baseline for the pass's overhead) and returns None.
    """
    state = distributed_state(state)
    device = state.device
    model = model.to(device).eval()
    site_kind, site_modules = sites, model.sites(sites)
    shapes = model.site_shapes(site_kind)
    num_groups = len(plan.group_own)
    active = {
        name: torch.zeros(num_groups, shapes[name].numel(), dtype=torch.bool, device=device) for name in site_modules
    }
    segments: list[tuple[int, int, int]] = []  # (group, start, end) of the current batch's rows

    def record(values: torch.Tensor, name: str) -> None:
        positive = (values > 0).flatten(1)
        for group, start, end in segments:
            active[name][group] |= positive[start:end].any(0)

    handles = []
    if observe:
        for name, site in site_modules.items():
            if site_kind == "relu":  # before the ReLU: its input is what the rule looks at
                hook = site.register_forward_pre_hook(lambda module, inputs, name=name: record(inputs[0], name))
            else:
                hook = site.register_forward_hook(lambda module, inputs, out, name=name: record(out, name))
            handles.append(hook)
    batches = planned_batches(
        model,
        dataset,
        plan,
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        state=state,
        progress=progress,
        desc="statistics pass" if observe else "inference pass",
        num_workers=num_workers,
    )
    with full_float32():  # once for the pass: the sign of a value near 0 must not depend on TF32 rounding
        try:
            for start, pixel_values in batches:
                segments[:] = _segments(plan.group[start : start + len(pixel_values)])
                with autocast(state):
                    model(to_model(pixel_values, model))
        finally:
            for handle in handles:
                handle.remove()
    if not observe:
        return None

    flat = torch.cat([active[name] for name in site_modules], dim=1).to(torch.uint8)
    flat = reduce(flat, reduction="sum").cpu() > 0  # union over processes
    group_own, group_negative = plan.group_own.T.float(), plan.group_negative.T.float()  # (M, G)
    own, negative, offset = {}, {}, 0
    for name in site_modules:
        size = shapes[name].numel()
        block = flat[:, offset : offset + size].float()  # (G, C*H*W)
        own[name] = (group_own @ block > 0).reshape(len(plan.classes), *shapes[name])
        negative[name] = (group_negative @ block > 0).reshape(len(plan.classes), *shapes[name])
        offset += size
    return ActivityMaps(own, negative, plan.own.sum(0), plan.negative.sum(0))


def planned_batches(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset,
    plan: SamplePlan,
    *,
    image_column: str,
    label_column: str,
    batch_size: int,
    state: DistributedState,
    progress: bool,
    desc: str,
    num_workers: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """This process's contiguous shard of the plan's rows, preprocessed for `model`, as (position in the plan of the
    batch's first row, pixel values (B, C, H, W)). The progress bar counts all processes' rows."""
    positions = list(range(len(plan.rows)))
    with state.split_between_processes(positions) as shard:
        rows = plan.rows[shard].tolist() if shard else []
        batches = iterate_batches(
            dataset.select(rows),
            image_processor_for(model.config),
            image_column=image_column,
            label_column=label_column,
            batch_size=batch_size,
            image_mode=image_mode(model.config.num_channels),
            rows=rows,
            image_size=fixed_input_size(model.config),
            num_workers=num_workers,
        )
        start = shard[0] if shard else 0
        disable = not progress or not state.is_local_main_process
        with progress_bar(total=len(positions), disable=disable, desc=desc, unit="img") as bar:
            for pixel_values, _ in batches:
                yield start, pixel_values
                start += len(pixel_values)
                bar.update(len(pixel_values) * state.num_processes)


def _segments(groups: torch.Tensor) -> list[tuple[int, int, int]]:
    """Runs of equal group ids in a batch, as (group, start, end)."""
    if len(groups) == 0:
        return []
    changes = torch.ones(len(groups), dtype=torch.bool)
    changes[1:] = groups[1:] != groups[:-1]
    starts = changes.nonzero().flatten().tolist()
    ends = [*starts[1:], len(groups)]
    return [(int(groups[s]), s, e) for s, e in zip(starts, ends, strict=True)]
