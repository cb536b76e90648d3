"""Dataset adapters: find the image and label columns, load local or Hub datasets, batch them through a processor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import BaseImageProcessor


def load_image_dataset(
    name_or_path: str | os.PathLike | datasets.Dataset,
    split: str = "train",
    revision: str | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """A `datasets.Dataset` from a Dataset, a Hub name, a `.parquet` file, or a folder of parquet files or images.

    A parquet file's split is taken from its name when it is `train.parquet`/`test.parquet`; any other name is
    loaded as the requested split. `revision` pins a Hub dataset to a branch, tag or commit.
    """
    if isinstance(name_or_path, datasets.Dataset):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix == ".parquet" and path.is_file():
        return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split, **load_kwargs)
    if path.is_dir():
        parquet = sorted(path.glob(f"{split}*.parquet")) or sorted(path.glob(f"*/{split}*.parquet"))
        if parquet:
            files = [str(p) for p in parquet]
            return datasets.load_dataset("parquet", data_files={split: files}, split=split, **load_kwargs)
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, **load_kwargs)
    return datasets.load_dataset(str(name_or_path), split=split, revision=revision, **load_kwargs)


def dataset_name(dataset: datasets.Dataset, source: Any = None) -> str | None:
    """What to call a dataset in provenance: the name or path it was loaded from, else its builder's name unless
    that is a generic loader ("parquet", "imagefolder", ...) that says nothing about the data."""
    if source is not None:
        return str(source)
    builder_name = dataset.info.dataset_name
    generic = builder_name in (None, "parquet", "imagefolder", "csv", "json", "arrow", "generator", "text")
    return None if generic else builder_name


def dataset_split(dataset: datasets.Dataset, default: str) -> str:
    """The split a Dataset object was loaded as (datasets records it), else `default`."""
    return str(dataset.split) if dataset.split is not None else default


def find_columns(
    dataset: datasets.Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """The image column (an `Image` feature) and the label column (a `ClassLabel`), unless given."""
    features = dataset.features
    for given, kind in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in features:
            raise ValueError(f"The dataset has no {kind} column {given!r}; its columns are {list(features)}.")
    if image_column is None:
        images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        if not images:
            raise ValueError(
                f"No image column found among {list(features)} (none has the datasets.Image feature). "
                "Pass image_column=... or cast the column with dataset.cast_column(name, datasets.Image())."
            )
        image_column = images[0]
    if label_column is not None and not isinstance(features[label_column], datasets.ClassLabel):
        raise ValueError(
            f"The label column {label_column!r} is not a ClassLabel, so its values have no class names to match the "
            f"model's labels. Run dataset = dataset.class_encode_column({label_column!r}) first."
        )
    if label_column is None:
        labels = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
        if not labels:
            raise ValueError(
                f"No label column found among {list(features)} (none has the datasets.ClassLabel feature). "
                "Pass label_column=... or run dataset.class_encode_column(name)."
            )
        label_column = labels[0]
    return image_column, label_column


def label_names(dataset: datasets.Dataset, label_column: str) -> list[str]:
    """The class names of a `ClassLabel` column (see `find_columns`)."""
    return list(dataset.features[label_column].names)


UNLABELLED = -1  # the datasets convention for a row without a label


def label_ids(dataset: datasets.Dataset, label_column: str) -> torch.Tensor:
    """The label column as an (N,) int64 tensor, read as one Arrow column (indexing `dataset[column]` row by row
    costs seconds on 50k rows)."""
    ids = dataset.select_columns([label_column]).with_format("torch")[:][label_column].long()
    feature = dataset.features[label_column]
    count = feature.num_classes if isinstance(feature, datasets.ClassLabel) else None
    bad = ids < UNLABELLED
    if count is not None:
        bad |= ids >= count
    if bad.any():
        row = int(bad.nonzero()[0])
        allowed = f"0-{count - 1}" if count is not None else "0 and up"
        raise ValueError(
            f"Row {row} of the dataset has label {int(ids[row])}, outside its {label_column!r} column's ids "
            f"({allowed}, or -1 for an unlabelled row). Fix or drop that row."
        )
    return ids


def select_classes(dataset: datasets.Dataset, labels: list[str], label_column: str | None = None) -> datasets.Dataset:
    """The rows of `labels`' classes, relabelled with a ClassLabel of exactly those names (in that order)."""
    _, label_column = find_columns(dataset, label_column=label_column)
    names = label_names(dataset, label_column)
    missing = [label for label in labels if label not in names]
    if missing:
        raise ValueError(f"The dataset has no classes {missing}; its classes are {names}.")
    wanted = {names.index(label): position for position, label in enumerate(labels)}
    subset = dataset.filter(lambda row: row[label_column] in wanted)
    features = subset.features.copy()
    features[label_column] = datasets.ClassLabel(names=list(labels))
    return subset.map(lambda row: {label_column: wanted[row[label_column]]}, features=features)


def iterate_batches(
    dataset: datasets.Dataset,
    processor: BaseImageProcessor,
    *,
    image_column: str,
    label_column: str,
    batch_size: int = 256,
    image_mode: str = "RGB",
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(pixel_values (B, C, H, W), labels (B,))` in dataset order, preprocessed by `processor`.

    Images are converted to `image_mode` first ("RGB" for 3 input channels, "L" for 1).
    """

    def collate(rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [row[image_column].convert(image_mode) for row in rows]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        return pixel_values, torch.tensor([row[label_column] for row in rows])

    loader = torch.utils.data.DataLoader(
        dataset.select_columns([image_column, label_column]),
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=num_workers,
    )
    yield from loader


def dataset_to_model_labels(
    dataset_labels: list[str], model_labels: dict[int, str], *, unknown_as: int | None = None
) -> torch.Tensor:
    """Index map from the dataset's label ids to the model's, matched by name. Unknown names raise, or map to
    `unknown_as` when it is given. The map has one entry more, -1, last: indexed with the datasets convention for an
    unlabelled row (-1) it gives -1, which every consumer skips, instead of the last class."""
    by_name = {name: index for index, name in model_labels.items()}
    unknown = [name for name in dataset_labels if name not in by_name]
    if unknown and unknown_as is None:
        raise ValueError(
            f"The dataset has labels the model does not know: {unknown[:5]}. The model's labels are "
            f"{list(by_name)[:10]}. Use a dataset with the model's classes, or select those rows first."
        )
    return torch.tensor([by_name.get(name, unknown_as) for name in dataset_labels] + [UNLABELLED])
