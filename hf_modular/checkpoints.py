"""Training checkpoints: what `train()` needs to continue a run after an epoch, in safetensors and JSON only, so
resuming loads no pickle (Accelerate's `save_state` writes the optimizer and random states as pickles, and saves
every model its Accelerator ever prepared, which breaks when the caller's Accelerator trained another one before).

A checkpoint directory holds `model.safetensors` (the model's tensors), `optimizer.safetensors` (the optimizer's
per-parameter tensors, SGD's momentum buffers, named `<parameter index>.<name>`) and `state.json` (the optimizer's
other per-parameter values and its parameter groups, the scheduler's state, and fp16's loss scaler where there is
one). Nothing random needs saving: `train()` draws each epoch's order and each row's augmentation from the seed, the
epoch and the row. Every process holds the same state, so the main process writes it; every process reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .saving import follow_umask

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"


@dataclass
class TrainingState:
    """What a training run changes as it goes, and so what a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16's loss scaler, where there is one

    def save(self, directory: Path) -> None:
        """Write the state into `directory` (created); call it on the main process only."""
        directory.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.model.state_dict().items()}
        save_file(weights, str(directory / MODEL_FILE))
        optimizer_state = self.optimizer.state_dict()
        tensors, values = {}, {}
        for index, state in optimizer_state["state"].items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
                else:  # e.g. a momentum buffer that is still None
                    values[f"{index}.{name}"] = value
        save_file(tensors, str(directory / OPTIMIZER_FILE))
        state = {
            "optimizer": {"param_groups": optimizer_state["param_groups"], "values": values},
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        (directory / STATE_FILE).write_text(json.dumps(state))
        follow_umask(directory)

    def load(self, directory: Path) -> None:
        """Restore what `save` wrote (from the same kind of model, optimizer, scheduler and scaler)."""
        device = next(self.model.parameters()).device
        self.model.load_state_dict(load_file(str(directory / MODEL_FILE), device=str(device)))
        state = json.loads((directory / STATE_FILE).read_text())
        per_parameter: dict[int, dict[str, Any]] = {}
        tensors = load_file(str(directory / OPTIMIZER_FILE), device=str(device))
        for key, value in [*tensors.items(), *state["optimizer"]["values"].items()]:
            index, name = key.split(".", 1)
            per_parameter.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": per_parameter, "param_groups": state["optimizer"]["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
