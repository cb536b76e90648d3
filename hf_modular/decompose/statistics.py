"""The statistics pass: one forward pass of the parent over the planned rows, counting at every site how often each
node is active (> 0) among each module's own inputs and among its negatives.

Data-parallel with Accelerate: each process runs a contiguous shard of the rows (no padding, no duplicates), and the
counts are summed across processes once at the end. Sums of 0/1 counts are exact, so the result is bit-identical on
any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..data import iterate_batches
from ..modeling_modular_resnet import ModularResNetForImageClassification
from ..processing import image_processor_for
from .sampling import SamplePlan


@dataclass
class ActivationCounts:
    """Per site (ReLU module name): counts of active nodes, each of shape (M, C, H, W) for M modules.

    `own[site][m]` counts module m's own-class inputs on which the node entering the ReLU was > 0;
    `negative[site][m]` the same over its negative inputs. `own_samples` / `negative_samples` (M,) are the numbers of
    inputs observed.
    """

    own: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor]
    own_samples: torch.Tensor
    negative_samples: torch.Tensor


@torch.inference_mode()
def collect_activation_counts(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset,
    plan: SamplePlan,
    *,
    image_column: str,
    label_column: str,
    batch_size: int = 128,
    accelerator: Accelerator | None = None,
    sites: str = "relu",
    observe: bool = True,
    progress: bool = True,
) -> ActivationCounts | None:
    """Run `model` over `dataset.select(plan.rows)`, sharded across `accelerator`'s processes.

    `sites="relu"` observes the value entering every ReLU; `sites="conv"` every convolution's raw output. With
    `observe=False` the same pass runs without counting (a baseline for the pass's overhead) and returns None.
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    model = model.to(device).eval()
    site_kind, sites = sites, model.sites(sites)
    num_modules = len(plan.classes)
    counts = {name: None for name in sites}
    # One (2M, B) usage matrix per batch: rows 0..M-1 select own inputs, M..2M-1 negatives.
    usage = torch.cat([plan.own, plan.negative], dim=1).T.float()
    current: dict[str, torch.Tensor] = {}

    def count_active(values: torch.Tensor, name: str) -> None:
        active = (values > 0).flatten(1).float()  # (B, C*H*W)
        added = current["usage"] @ active  # (2M, C*H*W); exact for counts below 2**24
        counts[name] = added if counts[name] is None else counts[name] + added

    handles = []
    if observe:
        for name, site in sites.items():
            if site_kind == "relu":  # before the ReLU: its input is what the rule looks at
                hook = site.register_forward_pre_hook(lambda module, inputs, name=name: count_active(inputs[0], name))
            else:
                hook = site.register_forward_hook(lambda module, inputs, out, name=name: count_active(out, name))
            handles.append(hook)
    positions = list(range(len(plan.rows)))
    try:
        with accelerator.split_between_processes(positions) as shard:
            subset = dataset.select(plan.rows[shard].tolist()) if shard else dataset.select([])
            batches = iterate_batches(
                subset,
                image_processor_for(model.config),
                image_column=image_column,
                label_column=label_column,
                batch_size=batch_size,
                image_mode="RGB" if model.config.num_channels == 3 else "L",
            )
            start = shard[0] if shard else 0
            bar = tqdm(
                total=len(shard),
                disable=not progress or not accelerator.is_local_main_process,
                desc="statistics pass" if observe else "inference pass",
                unit="img",
            )
            for pixel_values, _ in batches:
                current["usage"] = usage[:, start : start + len(pixel_values)].to(device)
                model(pixel_values.to(device))
                start += len(pixel_values)
                bar.update(len(pixel_values) * accelerator.num_processes)
            bar.close()
    finally:
        for handle in handles:
            handle.remove()
    if not observe:
        return None

    # Processes with an empty shard saw nothing: give them zeros of the right shape before the reduction.
    shapes = model.site_shapes(site_kind)
    flat = torch.cat(
        [
            (counts[name] if counts[name] is not None else torch.zeros(2 * num_modules, shapes[name].numel())).to(
                device
            )
            for name in sites
        ],
        dim=1,
    )
    flat = accelerator.reduce(flat, reduction="sum").cpu()
    own, negative, offset = {}, {}, 0
    for name in sites:
        size = shapes[name].numel()
        block = flat[:, offset : offset + size].reshape(2 * num_modules, *shapes[name])
        own[name], negative[name] = block[:num_modules], block[num_modules:]
        offset += size
    return ActivationCounts(own, negative, plan.own.sum(0), plan.negative.sum(0))
