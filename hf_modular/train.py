"""Train a ModularResNet parent on an image-classification dataset, with Accelerate (CPU, one GPU or many).

    model = ModularResNetForImageClassification(ModularResNetConfig.from_preset("modular_resnet20", id2label=...))
    history = train(model, train_dataset, eval_dataset=test_dataset, epochs=30, output_dir="run")

SGD with Nesterov momentum and a cosine schedule; standard augmentation for the input size (random crop with
padding and horizontal flip for 32x32 and up, small shifts below); evaluation after every epoch; with `output_dir`,
a checkpoint after every epoch (safetensors and JSON, `checkpoints.py`) that a rerun resumes from.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torchvision.transforms import v2

from .checkpoints import TrainingState
from .console import progress_bar
from .data import (
    dataset_fingerprint,
    dataset_name,
    dataset_split,
    dataset_to_model_labels,
    decode_image,
    find_columns,
    label_ids,
    label_names,
    require_dataset,
    undecoded,
)
from .distributed import DistributedState, batch_norm_over_processes, sum_over_processes, to_model, training_accelerator
from .evaluation import evaluate
from .models import ARCHITECTURE_FIELDS, ModularResNetForImageClassification, image_mode, image_processor_for
from .module.metrics import weights_sha256
from .validation import check_number
from .version import __version__

logger = logging.getLogger(__name__)
STATE_FILE = "training_state.json"


@dataclass
class TrainingHistory:
    """Per epoch: mean training loss, and eval top-1 / top-5 when an eval set was given."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


@dataclass
class Augmentation:
    """Random crop with zero padding (an eighth of the size, at least one pixel) and an optional horizontal flip, of
    one normalised (C, H, W) image, drawn from `generator`: each row's draw depends on its own seed only, so it is
    the same however many processes or DataLoader workers share the epoch."""

    image_size: int
    horizontal_flip: bool = True

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        padding = max(1, self.image_size // 8)
        top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
        image = v2.functional.crop(v2.functional.pad(image, [padding]), top, left, self.image_size, self.image_size)
        flip = torch.rand(1, generator=generator).item() < 0.5
        return v2.functional.horizontal_flip(image) if self.horizontal_flip and flip else image


@dataclass
class _EpochRows(torch.utils.data.Dataset):
    """Key (epoch, index) -> (row `index` of `dataset`, the seed of its augmentation in that epoch, the row's number
    in the user's dataset: `numbers[index]`)."""

    dataset: datasets.Dataset
    seed: int
    numbers: Sequence[int]

    def __getitem__(self, key: tuple[int, int]) -> tuple[dict[str, Any], int, int]:
        epoch, index = key
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        return self.dataset[index], seed, self.numbers[index]

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class _TrainingBatch:
    """Rows -> augmented (B, C, H, W) pixel values and the model's label ids: a plain object rather than a closure, so
    that DataLoader workers started by spawn can receive it. A process's share of a small last batch can be empty."""

    processor: Any
    augment: Augmentation
    image_mode: str
    num_channels: int
    image_column: str
    label_column: str
    to_model_labels: torch.Tensor

    def __call__(self, items: list[tuple[dict[str, Any], int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not items:
            size = self.augment.image_size
            return torch.empty(0, self.num_channels, size, size), torch.empty(0, dtype=torch.long)
        images = [
            decode_image(row[self.image_column], number, self.image_mode, column=self.image_column)
            for row, _, number in items
        ]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        labels = self.to_model_labels[[row[self.label_column] for row, _, _ in items]]
        augmented = [
            self.augment(image, torch.Generator().manual_seed(seed))
            for image, (_, seed, _) in zip(pixel_values, items, strict=True)
        ]
        return torch.stack(augmented), labels


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int, state: DistributedState) -> list[list[int]]:
    """The global batches of `epoch` (the rows in an order drawn from `seed` and `epoch`, cut into `batch_size`), each
    cut into contiguous shares, one per process in rank order: this process's shares, one list per step."""
    # The seed of an epoch's order comes from (seed, epoch) together: `seed + epoch` would give seed 1's first epoch
    # the order of seed 0's second.
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
    shares = []
    for start in range(0, count, batch_size):
        with state.split_between_processes(order[start : start + batch_size]) as share:
            shares.append(list(share))
    return shares


def train(
    model: ModularResNetForImageClassification,
    train_dataset: datasets.Dataset,
    *,
    eval_dataset: datasets.Dataset | None = None,
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 0.1,
    weight_decay: float = 5e-4,
    horizontal_flip: bool = True,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    accelerator: Accelerator | None = None,
    mixed_precision: str | None = None,
    progress: bool = True,
    num_workers: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
) -> TrainingHistory:
    """Train `model` in place on `train_dataset` (labels matched to the model's `id2label` by name; the images and
    labels are the dataset's Image and ClassLabel columns, or `image_column` and `label_column`, in both datasets).

    `horizontal_flip=False` for data where mirroring changes the class (digits, text). With `output_dir`, the state
    after each epoch is saved there and a rerun continues from the last completed epoch.

    Runs where `accelerator` (default: one for this process, with Accelerate's `mixed_precision` "no", "fp16" or
    "bf16") places the model, in the model's dtype. Under `accelerate launch` the processes share each step's global
    batch of `batch_size` rows (batch norm included), so N processes take the steps one process takes; the
    evaluation is shared too. The model is left where the accelerator put it.
    """
    check_number("epochs", epochs, minimum=1, integer=True)
    check_number("batch_size", batch_size, minimum=1, integer=True)
    check_number("learning_rate", learning_rate, above=0)
    check_number("weight_decay", weight_decay, minimum=0)
    check_number("num_workers", num_workers, minimum=0, integer=True)
    seed = _seed(seed)
    _refuse_fp16_mixed_precision_of_a_float16_model(mixed_precision, model)  # before Accelerate fixes the precision
    accelerator = training_accelerator(accelerator, mixed_precision=mixed_precision)
    _refuse_fp16_mixed_precision_of_a_float16_model(accelerator.mixed_precision, model)  # given, or from the launcher
    initial_weights = weights_sha256(model)  # before any step: what the training started from
    set_seed(seed)
    train_dataset = require_dataset(train_dataset)
    eval_dataset = require_dataset(eval_dataset) if eval_dataset is not None else None
    given = {"image_column": image_column, "label_column": label_column}  # for the evaluation too (else its own)
    if eval_dataset is not None:  # checked before the first epoch rather than after it
        find_columns(eval_dataset, **given)
    image_column, label_column = find_columns(train_dataset, image_column, label_column)
    to_model_labels = dataset_to_model_labels(label_names(train_dataset, label_column), model.config.id2label)
    collate = _TrainingBatch(
        image_processor_for(model.config),
        Augmentation(model.config.image_size, horizontal_flip),
        image_mode(model.config.num_channels),
        model.config.num_channels,
        image_column,
        label_column,
        to_model_labels,
    )

    labelled = (label_ids(train_dataset, label_column) >= 0).nonzero().flatten()
    labelled_rows = train_dataset
    if len(labelled) < len(train_dataset):  # unlabelled rows (-1) teach nothing here
        logger.info("Skipping %d unlabelled rows", len(train_dataset) - len(labelled))
        labelled_rows = train_dataset.select(labelled.tolist())
    numbers = labelled.tolist() if len(labelled) < len(train_dataset) else range(len(train_dataset))
    columns = undecoded(labelled_rows.select_columns([image_column, label_column]), image_column)
    rows = _EpochRows(columns, seed, numbers)  # images decoded one by one, a broken one named by its row
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    model.train()
    # Every step is one global batch of `batch_size` rows shared by the processes (the loader is ours, not prepared:
    # Accelerate's would give each process batches of its own), so N processes take the steps one process takes.
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    training_state = TrainingState(model, optimizer, scheduler, accelerator.scaler)

    history, start_epoch = TrainingHistory(), 0
    # What a resumed run must share with the saved one: its schedule and its steps depend on all of it, and the
    # arithmetic (precision, process count) too, so that the record of the run describes every epoch of it.
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "horizontal_flip": bool(horizontal_flip),
        "seed": seed,
        "rows": len(rows),
        "mixed_precision": accelerator.mixed_precision,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "processes": accelerator.num_processes,
        "data": dataset_fingerprint(train_dataset),  # not in the record: its dataset section has it
        "architecture": {name: getattr(model.config, name) for name in ARCHITECTURE_FIELDS},  # nor this: config has
    }
    if output_dir is not None and (Path(output_dir) / STATE_FILE).is_file():
        saved = json.loads((Path(output_dir) / STATE_FILE).read_text())
        changed = {key: value for key, value in saved.get("settings", {}).items() if settings.get(key) != value}
        if changed:
            was = ", ".join(f"{key}={value!r} (now {settings[key]!r})" for key, value in changed.items())
            raise ValueError(
                f"{output_dir} holds a run started with other settings: {was}. A resumed run continues the saved "
                "schedule, so rerun with the same settings, or train into a new output directory."
            )
        if "checkpoint" not in saved:
            raise ValueError(
                f"{output_dir} holds a checkpoint in the format of an earlier hf_modular (Accelerate's, which loads "
                "pickles). Train into a new output directory (or `hf-modular train --overwrite`)."
            )
        training_state.load(Path(output_dir) / saved["checkpoint"])
        history.epochs, start_epoch = saved["history"], saved["epoch"]
        # A warning, not an info line: from the API, a new model given this output_dir silently becoming the saved
        # run's would surprise.
        logger.warning("Resuming the run saved in %s after epoch %d of %d", output_dir, start_epoch, epochs)

    steps = _Steps(prepared_model, model, optimizer, scheduler, accelerator, rows, collate, batch_size, num_workers)
    with batch_norm_over_processes(model, accelerator):
        for epoch in range(start_epoch, epochs):
            show_bar = progress and accelerator.is_local_main_process
            loss = steps.run_epoch(epoch, f"epoch {epoch + 1}/{epochs}", progress=show_bar)
            record = {"epoch": epoch + 1, "loss": loss}
            if eval_dataset is not None:  # every process evaluates its share of the rows
                accuracy = evaluate(
                    accelerator.unwrap_model(prepared_model), eval_dataset, state=accelerator, progress=False, **given
                )
                record.update(top1=accuracy.top1, top5=accuracy.top5)
            history.epochs.append(record)
            scores = (
                f"  top-1 {100 * record['top1']:.2f}%  top-5 {100 * record['top5']:.2f}%" if "top1" in record else ""
            )
            if accelerator.is_main_process:
                logger.info("epoch %d/%d  loss %.4f%s", epoch + 1, epochs, record["loss"], scores)
            if output_dir is not None:
                state = {"epoch": epoch + 1, "history": history.epochs, "settings": settings}
                _save_checkpoint(accelerator, Path(output_dir), state, training_state)
    model.eval()
    model.config.training = _training_record(
        train_dataset,
        eval_dataset,
        settings,
        history,
        initial_weights,
        previous=model.config.training,
        columns=((image_column, label_column), (given["image_column"], given["label_column"])),
    )
    return history


def _training_record(
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    settings: dict[str, Any],
    history: TrainingHistory,
    initial_weights: str,
    previous: dict[str, Any] | None,
    columns: tuple[tuple[str, str], tuple[str | None, str | None]],
) -> dict[str, Any]:
    """How the weights were made, for `config.training`: the data (with the columns read: `columns` holds the
    training set's and those given for the evaluation set), the settings (precision and process count included),
    the last epoch's loss and evaluation, the weights it started from (the record of an earlier training of them,
    if any, under `previous`)."""

    def data(dataset: datasets.Dataset, image_column: str | None, label_column: str | None) -> dict[str, Any]:
        image_column, label_column = find_columns(dataset, image_column, label_column)
        return {
            "name_or_path": dataset_name(dataset),  # the CLI knows the name or path it loaded the rows from
            "split": dataset_split(dataset, None),
            "revision": None,
            "config_name": None,
            "rows": len(dataset),
            "fingerprint": dataset_fingerprint(dataset),
            "image_column": image_column,
            "label_column": label_column,
        }

    return {
        "hf_modular_version": __version__,
        "dataset": data(train_dataset, *columns[0]),
        "eval_dataset": data(eval_dataset, *columns[1]) if eval_dataset is not None else None,
        **{key: value for key, value in settings.items() if key not in ("rows", "data", "architecture")},
        "trained_rows": settings["rows"],  # the labelled ones
        "optimizer": "SGD, Nesterov momentum 0.9, cosine schedule",
        "final": history.final,
        "initial_weights": {"sha256": initial_weights, "source": None},  # the CLI says which preset or timm model
        "previous": previous,
    }


def _seed(seed: object) -> int:
    """`seed` as a plain int (a NumPy integer too: the record goes to config.json), refused unless a whole number
    >= 0."""
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}.") from None
    check_number("seed", seed, minimum=0, integer=True)
    return seed


def _save_checkpoint(
    accelerator: Accelerator, output_dir: Path, state: dict[str, Any], training_state: TrainingState
) -> None:
    """Save the training state after an epoch so that a crash at any moment leaves a checkpoint to resume from.

    Each epoch's state goes to a directory of its own (`checkpoint-N`); then the state file, replaced atomically,
    names it, and only then are older checkpoints removed. The state file is the commit point: a rerun resumes from
    the checkpoint it names, which is always complete."""
    name = f"checkpoint-{state['epoch']}"
    if accelerator.is_main_process:  # every process holds the same state
        training_state.save(output_dir / name)
        partial = output_dir / f"{STATE_FILE}.partial"
        partial.write_text(json.dumps({**state, "checkpoint": name}))
        os.replace(partial, output_dir / STATE_FILE)
        for old in output_dir.iterdir():  # ours only: no other directory there is touched
            if old.is_dir() and old.name != name and re.fullmatch(r"checkpoint-\d+", old.name):
                shutil.rmtree(old)
    accelerator.wait_for_everyone()  # no process starts the next epoch (or returns) before the state is committed


def _refuse_fp16_mixed_precision_of_a_float16_model(mixed_precision: str | None, model: nn.Module) -> None:
    """fp16 mixed precision keeps float32 weights and scales the loss; on a GPU its gradient scaler refuses float16
    weights ("Attempting to unscale FP16 gradients"). Refused on every device, before any work."""
    if mixed_precision == "fp16" and next(model.parameters()).dtype == torch.float16:
        raise ValueError(
            "Mixed precision fp16 trains a float32 model in float16 arithmetic, and this model's weights are already "
            "float16. Train the float32 model with mixed_precision='fp16' (--mixed-precision fp16), or this one "
            "without mixed precision."
        )


@dataclass
class _Steps:
    """The optimisation steps of one epoch. Each step is one global batch of `batch_size` rows that the processes
    share; each process scales its summed loss so that the gradients they average are the global batch's mean."""

    prepared_model: nn.Module
    model: ModularResNetForImageClassification
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accelerator: Accelerator
    rows: _EpochRows
    collate: _TrainingBatch
    batch_size: int
    num_workers: int

    def run_epoch(self, epoch: int, description: str, progress: bool) -> float:
        """Train on every row once; the mean training loss over all processes' rows."""
        self.prepared_model.train()
        shares = epoch_batches(len(self.rows), self.batch_size, self.rows.seed, epoch, self.accelerator)
        loader = torch.utils.data.DataLoader(
            self.rows,
            batch_sampler=[[(epoch, index) for index in share] for share in shares],
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=self.accelerator.device.type == "cuda",  # so that `to_model`'s copy does not block
        )
        global_sizes = [
            min(self.batch_size, len(self.rows) - start) for start in range(0, len(self.rows), self.batch_size)
        ]
        losses = []  # kept on the device: reading one per step would make the CPU wait for the GPU every step
        batches = progress_bar(loader, desc=description, disable=not progress)
        for (pixel_values, labels), global_size in zip(batches, global_sizes, strict=True):
            logits = self.prepared_model(to_model(pixel_values, self.model)).logits
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64
            loss = nn.functional.cross_entropy(logits, labels.to(logits.device), reduction="sum")
            self.accelerator.backward(loss * self.accelerator.num_processes / global_size)
            self.optimizer.step()
            if not self.optimizer.step_was_skipped:  # fp16's loss scaler skips steps with inf gradients
                self.scheduler.step()
            self.optimizer.zero_grad()
            losses.append(loss.detach())
        total = math.fsum(torch.stack(losses).double().cpu().tolist()) if losses else 0.0
        return sum_over_processes(torch.tensor([total], dtype=torch.float64), self.accelerator).item() / len(self.rows)
