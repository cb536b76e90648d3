"""Top-1 / top-5 accuracy of a classifier on a labelled image dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch
from tqdm.auto import tqdm

from .data import find_columns, iterate_batches, label_names
from .modeling_modular_resnet import ModularResNetForImageClassification
from .processing import image_processor_for


@dataclass
class Accuracy:
    """Accuracy over `count` examples; `per_class` maps label name -> recall on that class."""

    top1: float
    top5: float
    count: int
    per_class: dict[str, float] = field(default_factory=dict)


def dataset_to_model_labels(dataset_labels: list[str], model_labels: dict[int, str]) -> torch.Tensor:
    """Index map from the dataset's label ids to the model's, matched by name; unknown names raise."""
    by_name = {name: index for index, name in model_labels.items()}
    unknown = [name for name in dataset_labels if name not in by_name]
    if unknown:
        raise ValueError(
            f"The dataset has labels the model does not know: {unknown[:5]}. The model's labels are "
            f"{list(by_name)[:10]}. Use a dataset with the model's classes, or select those rows first."
        )
    return torch.tensor([by_name[name] for name in dataset_labels])


@torch.inference_mode()
def evaluate(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> Accuracy:
    """Evaluate `model` on every row of `dataset`, preprocessing with the model's own image processor."""
    image_column, label_column = find_columns(dataset, image_column, label_column)
    to_model = dataset_to_model_labels(label_names(dataset, label_column), model.config.id2label)
    num_labels = model.config.num_labels
    hits_top1 = torch.zeros(num_labels)
    hits_top5 = torch.zeros(num_labels)
    totals = torch.zeros(num_labels)
    model.eval()
    batches = iterate_batches(
        dataset,
        image_processor_for(model.config),
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        image_mode="RGB" if model.config.num_channels == 3 else "L",
    )
    for pixel_values, labels in tqdm(batches, total=-(-len(dataset) // batch_size), disable=not progress):
        labels = to_model[labels]
        logits = model(pixel_values).logits
        top = logits.topk(min(5, num_labels), dim=1).indices
        totals += torch.bincount(labels, minlength=num_labels)
        hits_top1 += torch.bincount(labels[top[:, 0] == labels], minlength=num_labels)
        hits_top5 += torch.bincount(labels[(top == labels[:, None]).any(1)], minlength=num_labels)
    count = int(totals.sum())
    if count == 0:
        raise ValueError("The dataset is empty: nothing to evaluate.")
    per_class = {model.config.id2label[i]: float(hits_top1[i] / totals[i]) for i in range(num_labels) if totals[i] > 0}
    return Accuracy(float(hits_top1.sum() / count), float(hits_top5.sum() / count), count, per_class)
