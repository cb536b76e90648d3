"""Where the work runs: the one place that creates the distributed state, and the helpers that put tensors where a
model lives.

Decomposition, scoring and evaluation need only what `accelerate.PartialState` offers (the device, this process's
rank, splitting work, collectives); training and mixed precision need a full `Accelerator`. Both have those
attributes, so every entry point accepts either and falls back to the state `accelerate launch` / `torchrun` set up.
Inputs always follow the model: its device and its floating dtype, so a float64 or bfloat16 parent (or one on a
GPU) never meets a float32 CPU batch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object, reduce
from torch import nn

DistributedState = PartialState | Accelerator
MIXED_PRECISION = ("no", "fp16", "bf16")


def distributed_state(
    given: DistributedState | None = None, *, cpu: bool = False, mixed_precision: str | None = None
) -> DistributedState:
    """`given` when the caller passed one; else an `Accelerator` when `mixed_precision` asks for one ("fp16" or
    "bf16", Accelerate's own autocast), else this process's `PartialState` (on the CPU with `cpu=True`)."""
    if given is not None:
        return given
    if mixed_precision not in (None, "no"):
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, not {mixed_precision!r}.")
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    return PartialState(cpu=cpu)


def training_accelerator(
    given: Accelerator | None = None, *, cpu: bool = False, mixed_precision: str | None = None
) -> Accelerator:
    """`given`, else an `Accelerator` for this process: training needs one (it wraps model, optimizer and loader)."""
    if given is not None:
        return given
    if mixed_precision not in (None, *MIXED_PRECISION):
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, not {mixed_precision!r}.")
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def mixed_precision_of(state: DistributedState) -> str:
    """ "no", "fp16" or "bf16": the autocast `state` runs models under."""
    return getattr(state, "mixed_precision", "no") or "no"


def autocast(state: DistributedState) -> contextlib.AbstractContextManager:
    """Accelerate's autocast for an `Accelerator` with mixed precision; nothing otherwise."""
    return state.autocast() if isinstance(state, Accelerator) else contextlib.nullcontext()


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where `model`'s weights live and their floating dtype."""
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def to_model(pixel_values: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """`pixel_values` on `model`'s device, in its floating dtype."""
    device, dtype = device_and_dtype(model)
    return pixel_values.to(device=device, dtype=dtype, non_blocking=True)


def split_rows(state: DistributedState, count: int) -> contextlib.AbstractContextManager[list[int]]:
    """This process's contiguous share of `range(count)` (all of it on one process); shares concatenated in rank
    order are the rows in order, so gathered results equal one process's."""
    return state.split_between_processes(list(range(count)))


def sum_over_processes(tensor: torch.Tensor, state: DistributedState) -> torch.Tensor:
    """The element-wise sum of `tensor` over all processes, on the CPU (exact for counts)."""
    if state.num_processes == 1:
        return tensor
    return reduce(tensor.to(state.device), reduction="sum").cpu()


def concat_over_processes(tensor: torch.Tensor, state: DistributedState) -> torch.Tensor:
    """Every process's `tensor` (CPU, any first-dimension length) concatenated in rank order."""
    if state.num_processes == 1:
        return tensor
    return torch.cat(gather_object([tensor.cpu()]))


def gather_in_order(value: Any, state: DistributedState) -> list[Any]:
    """Every process's `value`, in rank order (a one-item list on one process)."""
    return gather_object([value]) if state.num_processes > 1 else [value]
