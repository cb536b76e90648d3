"""Train a ModularResNet parent on an image-classification dataset, with Accelerate (CPU, one GPU or many).

    model = ModularResNetForImageClassification(ModularResNetConfig.from_preset("modular_resnet20", id2label=...))
    history = train(model, train_dataset, eval_dataset=test_dataset, epochs=30, output_dir="run")

SGD with Nesterov momentum and a cosine schedule; standard augmentation for the input size (random crop with
padding and horizontal flip for 32x32 and up, small shifts below); evaluation after every epoch; with `output_dir`,
a checkpoint after every epoch (Accelerate's `save_state`) that a rerun resumes from.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torchvision.transforms import v2

from .console import progress_bar
from .data import dataset_to_model_labels, find_columns, label_ids, label_names, require_dataset
from .distributed import sum_over_processes, to_model, training_accelerator
from .evaluation import evaluate
from .models import ModularResNetForImageClassification, image_mode, image_processor_for
from .validation import check_number

logger = logging.getLogger(__name__)
STATE_FILE = "training_state.json"


@dataclass
class TrainingHistory:
    """Per epoch: mean training loss, and eval top-1 / top-5 when an eval set was given."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def augmentation(image_size: int, horizontal_flip: bool = True) -> v2.Compose:
    """Random crop with padding (an eighth of the size) and an optional flip, on normalised (B, C, H, W) tensors."""
    steps: list[Any] = [v2.RandomCrop(image_size, padding=max(1, image_size // 8))]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


@dataclass
class _TrainingBatch:
    """Rows -> augmented (B, C, H, W) pixel values and the model's label ids: a plain object rather than a closure, so
    that DataLoader workers started by spawn can receive it."""

    processor: Any
    augment: Any
    image_mode: str
    image_column: str
    label_column: str
    to_model_labels: torch.Tensor

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [row[self.image_column].convert(self.image_mode) for row in rows]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        labels = self.to_model_labels[[row[self.label_column] for row in rows]]
        return torch.stack([self.augment(image) for image in pixel_values]), labels


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
) -> TrainingHistory:
    """Train `model` in place on `train_dataset` (labels matched to the model's `id2label` by name).

    `horizontal_flip=False` for data where mirroring changes the class (digits, text). With `output_dir`, the state
    after each epoch is saved there and a rerun continues from the last completed epoch.

    Runs where `accelerator` (default: one for this process, with Accelerate's `mixed_precision` "no", "fp16" or
    "bf16") places the model, in the model's dtype; under `accelerate launch` each process trains on its share of
    every epoch and the evaluation is shared too. The model is left where the accelerator put it.
    """
    check_number("epochs", epochs, minimum=1, integer=True)
    check_number("batch_size", batch_size, minimum=1, integer=True)
    check_number("learning_rate", learning_rate, above=0)
    check_number("weight_decay", weight_decay, minimum=0)
    check_number("num_workers", num_workers, minimum=0, integer=True)
    accelerator = training_accelerator(accelerator, mixed_precision=mixed_precision)
    set_seed(seed)
    train_dataset = require_dataset(train_dataset)
    eval_dataset = require_dataset(eval_dataset) if eval_dataset is not None else None
    image_column, label_column = find_columns(train_dataset)
    to_model_labels = dataset_to_model_labels(label_names(train_dataset, label_column), model.config.id2label)
    collate = _TrainingBatch(
        image_processor_for(model.config),
        augmentation(model.config.image_size, horizontal_flip),
        image_mode(model.config.num_channels),
        image_column,
        label_column,
        to_model_labels,
    )

    labelled = (label_ids(train_dataset, label_column) >= 0).nonzero().flatten()
    if len(labelled) < len(train_dataset):  # unlabelled rows (-1) teach nothing here
        logger.info("Skipping %d unlabelled rows", len(train_dataset) - len(labelled))
        train_dataset = train_dataset.select(labelled.tolist())
    loader = torch.utils.data.DataLoader(
        train_dataset.select_columns([image_column, label_column]),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    model.train()
    prepared_model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    history, start_epoch = TrainingHistory(), 0
    if output_dir is not None and (Path(output_dir) / STATE_FILE).is_file():
        saved = json.loads((Path(output_dir) / STATE_FILE).read_text())
        accelerator.load_state(str(Path(output_dir) / "checkpoint"))
        history.epochs, start_epoch = saved["history"], saved["epoch"]
        logger.info("Resuming from epoch %d of %d", start_epoch, epochs)

    for epoch in range(start_epoch, epochs):
        prepared_model.train()
        total, count = 0.0, 0
        for pixel_values, labels in progress_bar(
            loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress or not accelerator.is_local_main_process
        ):
            loss = prepared_model(to_model(pixel_values, model), labels=labels).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total, count = total + loss.item() * len(labels), count + len(labels)
        total, count = sum_over_processes(torch.tensor([total, count], dtype=torch.float64), accelerator).tolist()
        record = {"epoch": epoch + 1, "loss": total / max(count, 1)}
        if eval_dataset is not None:  # every process evaluates its share of the rows
            accuracy = evaluate(
                accelerator.unwrap_model(prepared_model), eval_dataset, state=accelerator, progress=False
            )
            record.update(top1=accuracy.top1, top5=accuracy.top5)
        history.epochs.append(record)
        scores = f"  top-1 {100 * record['top1']:.2f}%  top-5 {100 * record['top5']:.2f}%" if "top1" in record else ""
        logger.info("epoch %d/%d  loss %.4f%s", epoch + 1, epochs, record["loss"], scores)
        if output_dir is not None:
            accelerator.save_state(str(Path(output_dir) / "checkpoint"))
            if accelerator.is_main_process:
                state = Path(output_dir) / STATE_FILE
                state.with_suffix(".partial").write_text(json.dumps({"epoch": epoch + 1, "history": history.epochs}))
                os.replace(state.with_suffix(".partial"), state)
    model.eval()
    return history
