"""The one place that creates the distributed state.

Decomposition, scoring and evaluation need only what `accelerate.PartialState` offers (the device, this process's
rank, splitting work, collectives); training needs a full `Accelerator`. Both have those attributes, so every
entry point accepts either and falls back to the state `accelerate launch` / `torchrun` set up.
"""

from __future__ import annotations

from accelerate import Accelerator, PartialState

DistributedState = PartialState | Accelerator


def distributed_state(given: DistributedState | None = None, *, cpu: bool = False) -> DistributedState:
    """`given` when the caller passed one, else this process's `PartialState` (on the CPU with `cpu=True`)."""
    return given if given is not None else PartialState(cpu=cpu)
