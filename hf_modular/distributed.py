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
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed.nn.functional as differentiable
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object, reduce
from torch import nn

DistributedState = PartialState | Accelerator
MIXED_PRECISION = ("no", "fp16", "bf16")
T = TypeVar("T")

logger = logging.getLogger(__name__)


def distributed_state(
    given: DistributedState | None = None, *, cpu: bool = False, mixed_precision: str | None = None
) -> DistributedState:
    """`given` when the caller passed one; else an `Accelerator` when `mixed_precision` asks for one ("fp16" or
    "bf16", Accelerate's own autocast), else this process's `PartialState` (on the CPU with `cpu=True`)."""
    if given is not None:
        return given
    cpu = cpu or _launched_without_accelerators()
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
    cpu = cpu or _launched_without_accelerators()
    if mixed_precision not in (None, *MIXED_PRECISION):
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, not {mixed_precision!r}.")
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def _launched_without_accelerators() -> bool:
    """Started as one of several processes (torchrun, `accelerate launch`) on a machine without a GPU. Accelerate
    then counts 1 process unless told `cpu=True`, so each process would do the whole job alone, all writing the same
    output; with it, they share the work over gloo."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def mixed_precision_of(state: DistributedState) -> str:
    """ "no", "fp16" or "bf16": the autocast `state` runs models under."""
    return getattr(state, "mixed_precision", "no") or "no"


def autocast(state: DistributedState) -> contextlib.AbstractContextManager:
    """Accelerate's autocast for an `Accelerator` with mixed precision; nothing otherwise."""
    return state.autocast() if isinstance(state, Accelerator) else contextlib.nullcontext()


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 convolutions and matmuls in full float32 inside the block, not TensorFloat-32 (cuDNN's default for
    float32 convolutions on recent GPUs keeps 10 mantissa bits): for passes whose decisions read exact values, the
    activation strategy's sign test. The previous settings come back after; the CPU never uses TF32."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9; mixing it with the old flags is an error
        matmul = torch.backends.cuda.matmul
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where `model`'s weights live and their floating dtype."""
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def warn_if_off_the_process_device(model: nn.Module, state: DistributedState, what: str) -> None:
    """Inputs follow the model, so on several processes a model left off each process's device (all of them on the
    CPU, or all on cuda:0) gives the right numbers without the parallelism: say so, once."""
    device, expected = device_and_dtype(model)[0], state.device
    # "cpu" and "cpu:0" are one device; an index left out ("cuda") cannot be told apart from the process's.
    same = device == expected or (device.type == expected.type and None in (device.index, expected.index))
    if state.num_processes > 1 and not same and state.is_main_process:
        logger.warning(
            "%s runs on %d processes, but the model is on %s, not on each process's device (here %s): every process "
            "computes there. Move it first: model.to(PartialState().device).",
            what,
            state.num_processes,
            device,
            state.device,
        )


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
        return tensor.cpu()
    return reduce(tensor.to(state.device), reduction="sum").cpu()


def concat_over_processes(tensor: torch.Tensor, state: DistributedState) -> torch.Tensor:
    """Every process's `tensor` (CPU, any first-dimension length) concatenated in rank order."""
    if state.num_processes == 1:
        return tensor
    return torch.cat(gather_object([tensor.cpu()]))


def on_main_process(compute: Callable[[], T], state: DistributedState) -> T:
    """`compute()`'s answer, asked on the main process only and sent to every process: one answer where each process
    asking could get another (a Hub branch that moves between their calls)."""
    if state.num_processes == 1:
        return compute()
    return broadcast_object_list([compute() if state.is_main_process else None])[0]


def gather_in_order(value: Any, state: DistributedState) -> list[Any]:
    """Every process's `value`, in rank order (a one-item list on one process)."""
    return gather_object([value]) if state.num_processes > 1 else [value]


def _sum_over_processes_differentiably(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all processes; its backward pass sums the gradients over all processes too."""
    with warnings.catch_warnings():  # deprecated for a private successor; this one works on every torch we support
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_reduce is deprecated", FutureWarning)
        return differentiable.all_reduce(tensor)


class _BatchNormOverProcesses(nn.BatchNorm2d):
    """A `BatchNorm2d` that, in training, normalises with the statistics of the whole global batch: the sums behind
    its mean and variance are added up over all processes, differentiably (the backward pass adds the gradients up
    the same way), so N processes train as one does. torch's `SyncBatchNorm` does this on GPUs only."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        # At least float32 (half-precision sums lose the mean), and float64 stays float64 as plain batch norm does.
        values = input.to(torch.promote_types(input.dtype, torch.float32))
        values = values.transpose(0, 1).flatten(1)  # (channels, everything else); may have no columns
        sums = _sum_over_processes_differentiably(torch.cat([values.sum(1), values.new_tensor([values.shape[1]])]))
        mean, count = sums[:-1] / sums[-1], sums[-1]
        variance = _sum_over_processes_differentiably(((values - mean[:, None]) ** 2).sum(1)) / count
        if self.track_running_stats:
            self._update_running_statistics(mean.detach(), variance.detach() * count / (count - 1).clamp(min=1))
        scale = torch.rsqrt(variance + self.eps)
        if self.affine:
            scale, shift = scale * self.weight, self.bias - mean * scale * self.weight
        else:
            shift = -mean * scale
        return (input * scale[None, :, None, None] + shift[None, :, None, None]).to(input.dtype)

    @torch.no_grad()
    def _update_running_statistics(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_variance.to(self.running_var.dtype), factor)


@contextlib.contextmanager
def batch_norm_over_processes(model: nn.Module, state: DistributedState) -> Iterator[None]:
    """While it lasts, `model`'s `BatchNorm2d` layers normalise training batches over all processes (nothing changes
    on one process). The layers keep their identity, parameters and buffers; only their class is switched, and
    switched back."""
    layers = [module for module in model.modules() if type(module) is nn.BatchNorm2d]
    if state.num_processes > 1:
        for layer in layers:
            layer.__class__ = _BatchNormOverProcesses
    try:
        yield
    finally:
        for layer in layers:
            layer.__class__ = nn.BatchNorm2d
