"""Channel scores for compact modules: per module and per channel of each scored site, how much removing the
channel would change the parent's decision "this module's class or not".

`importance="taylor"`: the first-order Taylor estimate over the module's own and negative inputs, mean over inputs
of (sum over positions of a * d s_c / d a)^2, where a is the channel's activation and s_c the log-odds of class c
(Molchanov et al., CVPR 2019). `importance="activation"`: the mean activation.
"""

from __future__ import annotations

import datasets
import torch
from torch import nn

from ....distributed import DistributedState, gather_in_order, to_model
from ....models import ModularResNetForImageClassification
from ...sampling import SamplePlan
from ...statistics import planned_batches

IMPORTANCE = ("taylor", "activation")


def log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(B, n) class logits -> (B, n) log-odds of each class against all the others."""
    eye = torch.eye(logits.shape[1], dtype=torch.bool, device=logits.device)
    others = logits[:, None, :].masked_fill(eye[None], float("-inf")).logsumexp(dim=-1)
    return logits - others


def collect_channel_scores(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset,
    plan: SamplePlan,
    sites: list[str],
    *,
    importance: str,
    image_column: str,
    label_column: str,
    batch_size: int = 128,
    state: DistributedState,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, torch.Tensor]:
    """Per site, (M, C) float64 channel scores for the plan's M modules (mean over each module's inputs).

    Each process scores a contiguous shard of the rows and keeps a row's (C,) scores only for the modules that use
    the row (a few of the M: storing (rows, M, C) would take gigabytes for a hundred classes). The kept scores are
    gathered in row order and summed in that order on every process, so the result does not depend on the number
    of processes.
    """
    device = state.device
    model = model.to(device).eval()
    site_modules = model.sites("relu")
    usage = (plan.own | plan.negative).to(device)  # (U, M)
    classes = torch.tensor(plan.classes, device=device)
    captured: dict[str, torch.Tensor] = {}
    handles = [
        site_modules[name].register_forward_hook(
            lambda module, inputs, output, name=name: captured.__setitem__(name, output)
        )
        for name in sites
    ]
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in sites}  # per site: (P, C) per batch
    kept_modules: list[torch.Tensor] = []  # (P,) per batch: the module each kept row of scores belongs to
    batches = planned_batches(
        model,
        dataset,
        plan,
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        state=state,
        progress=progress,
        desc="channel scores",
        num_workers=num_workers,
    )
    try:
        for start, pixel_values in batches:
            rows = usage[start : start + len(pixel_values)]  # (B, M)
            pairs = rows.nonzero()  # (P, 2): (row, module) pairs of the batch, in row order
            kept_modules.append(pairs[:, 1].cpu())
            for name, value in _batch_scores(model, to_model(pixel_values, model), rows, classes, captured, importance):
                kept[name].append(value[pairs[:, 0], pairs[:, 1]].cpu())
    finally:
        for handle in handles:
            handle.remove()
    counts = usage.sum(0).cpu().double().clamp_min(1)  # (M,)
    modules = _gathered(kept_modules, state)
    scores = {}
    for name in sites:
        values = _gathered(kept[name], state).double()  # (P over all rows, C)
        total = torch.zeros(len(plan.classes), values.shape[1], dtype=torch.float64)
        scores[name] = total.index_add_(0, modules, values) / counts[:, None]  # on the CPU: added in row order
    return scores


def _gathered(parts: list[torch.Tensor], state: DistributedState) -> torch.Tensor:
    """This process's batches, concatenated, then all processes' in rank order (= row order)."""
    local = torch.cat(parts) if parts else None  # None: this process had no rows
    return torch.cat([part for part in gather_in_order(local, state) if part is not None])


def _batch_scores(
    model: nn.Module,
    pixel_values: torch.Tensor,
    rows: torch.Tensor,
    classes: torch.Tensor,
    captured: dict[str, torch.Tensor],
    importance: str,
):
    """Yield (site, (B, M, C) per-row scores, zero where a row is not module m's)."""
    with torch.enable_grad():
        # The input asks for gradients so that activations carry them even when the parent's weights are frozen.
        logits = model(pixel_values.requires_grad_(True)).logits
        names = list(captured)
        activations = [captured[name] for name in names]
        if importance == "activation":
            for name, activation in zip(names, activations, strict=True):
                per_channel = activation.detach().mean(dim=(2, 3))  # (B, C)
                yield name, per_channel[:, None, :] * rows[:, :, None]
            return
        odds = log_odds(logits)
        results = [
            torch.zeros(len(pixel_values), rows.shape[1], a.shape[1], device=a.device, dtype=_at_least_float32(a))
            for a in activations
        ]
        used = rows.any(0).nonzero().flatten().tolist()
        for position, m in enumerate(used):
            target = (odds[:, classes[m]] * rows[:, m]).sum()
            gradients = torch.autograd.grad(target, activations, retain_graph=position < len(used) - 1)
            for result, activation, gradient in zip(results, activations, gradients, strict=True):
                # At least float32: a half-precision square underflows to 0 and ties channels that differ.
                precision = _at_least_float32(activation)
                taylor = (activation.detach().to(precision) * gradient.to(precision)).sum(dim=(2, 3)).square()  # (B, C)
                result[:, m] = taylor * rows[:, m, None]
        yield from zip(names, results, strict=True)
        captured.clear()


def _at_least_float32(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)
