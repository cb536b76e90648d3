"""Top-1 / top-5 accuracy of a classifier on a labelled image dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch
from tqdm.auto import tqdm

from .compose import ComposedModel, ExecutionPlan, composed_image_processor, own_class_probabilities, top_k, vote
from .data import dataset_to_model_labels, find_columns, iterate_batches, label_names
from .models import ModularResNetForImageClassification, image_mode, image_processor_for
from .module import own_vs_rest_quality


@dataclass
class Accuracy:
    """Accuracy over `count` examples; `per_class` maps label name -> recall on that class."""

    top1: float
    top5: float
    count: int
    per_class: dict[str, float] = field(default_factory=dict)


@torch.inference_mode()
def evaluate(
    model: ModularResNetForImageClassification | ComposedModel,
    dataset: datasets.Dataset,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> Accuracy:
    """Evaluate a classifier or a composed model on `dataset`, preprocessing with the model's own image processor.

    A composed model is measured on the rows of its own classes (a 2-class composition on the 2 classes' images);
    a classifier on every row, and a label it does not know is an error.
    """
    image_column, label_column = find_columns(dataset, image_column, label_column)
    composed = isinstance(model, ComposedModel)
    to_model = dataset_to_model_labels(
        label_names(dataset, label_column), model.config.id2label, unknown_as=-1 if composed else None
    )
    processor = composed_image_processor(model.config) if composed else image_processor_for(model.config)
    num_labels = model.config.num_labels
    hits_top1 = torch.zeros(num_labels)
    hits_top5 = torch.zeros(num_labels)
    totals = torch.zeros(num_labels)
    model.eval()
    batches = iterate_batches(
        dataset,
        processor,
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        image_mode=image_mode(model.config.num_channels),
    )
    for pixel_values, labels in tqdm(batches, total=-(-len(dataset) // batch_size), disable=not progress):
        labels = to_model[labels]
        known = labels >= 0
        if not known.any():
            continue
        pixel_values, labels = pixel_values[known], labels[known]
        logits = model(pixel_values).logits
        top = logits.topk(min(5, num_labels), dim=1).indices
        totals += torch.bincount(labels, minlength=num_labels)
        hits_top1 += torch.bincount(labels[top[:, 0] == labels], minlength=num_labels)
        hits_top5 += torch.bincount(labels[(top == labels[:, None]).any(1)], minlength=num_labels)
    count = int(totals.sum())
    if count == 0:
        raise ValueError("No image of the dataset has one of the model's labels: nothing to evaluate.")
    per_class = {model.config.id2label[i]: float(hits_top1[i] / totals[i]) for i in range(num_labels) if totals[i] > 0}
    return Accuracy(float(hits_top1.sum() / count), float(hits_top5.sum() / count), count, per_class)


@dataclass
class CompositionAccuracy:
    """The parent and its composed modules measured on the same images.

    `module_binary_accuracy` maps label -> share of images where the module's own/rest decision was right.
    `own_vs_rest` maps label -> {"module": quality, "parent": quality}: each module's own decision and the parent's
    own one-vs-rest decision for that class (softmax probability > 0.5), as `own_vs_rest_quality` measures them.
    """

    parent: Accuracy
    composed: Accuracy
    module_binary_accuracy: dict[str, float]
    own_vs_rest: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


@torch.inference_mode()
def evaluate_composition(
    parent: ModularResNetForImageClassification,
    modules: dict[str, ModularResNetForImageClassification],
    dataset: datasets.Dataset,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> CompositionAccuracy:
    """Top-1/top-5 of the parent and of the modules composed by the paper's vote, plus each module's binary accuracy.

    Images whose label has no module are skipped, so a composition of a subset of classes is measured on those classes.
    """
    image_column, label_column = find_columns(dataset, image_column, label_column)
    to_model = dataset_to_model_labels(label_names(dataset, label_column), parent.config.id2label)
    module_classes = torch.tensor([modules[label].config.provenance.target_index for label in modules])
    members = [module.eval() for module in modules.values()]
    shared = ExecutionPlan(members, [0] * len(members))  # every module reads the parent's input
    parent.eval()
    tallies = torch.zeros(5)  # parent top-1, top-5, composed top-1, top-5, count
    binary_hits = torch.zeros(len(modules))
    per_class = {label: torch.zeros(3) for label in modules}  # parent hits, composed hits, count
    module_probabilities, parent_probabilities, seen_labels = [], [], []  # per batch: (B, M), (B, M), (B,)
    batches = iterate_batches(
        dataset,
        image_processor_for(parent.config),
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        image_mode=image_mode(parent.config.num_channels),
    )
    for pixel_values, labels in tqdm(batches, total=-(-len(dataset) // batch_size), disable=not progress):
        labels = to_model[labels]
        keep = torch.isin(labels, module_classes)
        pixel_values, labels = pixel_values[keep], labels[keep]
        if len(labels) == 0:
            continue
        parent_logits = parent(pixel_values).logits
        parent_top = parent_logits.topk(min(5, parent.config.num_labels), dim=1).indices
        module_logits = shared([pixel_values] * len(members))
        composed_top1 = module_classes[vote(module_logits)]
        composed_top = module_classes[top_k(module_logits)]
        tallies += torch.tensor(
            [
                (parent_top[:, 0] == labels).sum(),
                (parent_top == labels[:, None]).any(1).sum(),
                (composed_top1 == labels).sum(),
                (composed_top == labels[:, None]).any(1).sum(),
                len(labels),
            ],
            dtype=torch.float,
        )
        claims = module_logits[..., 0] > module_logits[..., 1]
        binary_hits += (claims == (labels[:, None] == module_classes[None, :])).sum(0)
        module_probabilities.append(own_class_probabilities(module_logits))
        parent_probabilities.append(parent_logits.softmax(dim=1)[:, module_classes])
        seen_labels.append(labels)
        for m, label in enumerate(modules):
            mine = labels == module_classes[m]
            per_class[label] += torch.tensor(
                [(parent_top[mine, 0] == labels[mine]).sum(), (composed_top1[mine] == labels[mine]).sum(), mine.sum()],
                dtype=torch.float,
            )
    count = int(tallies[4])
    if count == 0:
        raise ValueError("No image of the dataset belongs to a module's class: nothing to evaluate.")
    parent_accuracy = Accuracy(
        float(tallies[0] / count),
        float(tallies[1] / count),
        count,
        {k: float(v[0] / v[2]) for k, v in per_class.items() if v[2]},
    )
    composed_accuracy = Accuracy(
        float(tallies[2] / count),
        float(tallies[3] / count),
        count,
        {k: float(v[1] / v[2]) for k, v in per_class.items() if v[2]},
    )
    binary = {label: float(binary_hits[m] / count) for m, label in enumerate(modules)}
    truth = torch.cat(seen_labels)[:, None] == module_classes[None, :]  # (N, M)
    module_probabilities, parent_probabilities = torch.cat(module_probabilities), torch.cat(parent_probabilities)
    own_vs_rest = {
        label: {
            "module": own_vs_rest_quality(module_probabilities[:, m], truth[:, m]),
            "parent": own_vs_rest_quality(parent_probabilities[:, m], truth[:, m]),
        }
        for m, label in enumerate(modules)
    }
    return CompositionAccuracy(parent_accuracy, composed_accuracy, binary, own_vs_rest)
