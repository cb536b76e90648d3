"""Dataset adapters: find the image and label columns, load local or Hub datasets, batch them through a processor."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet
import torch
from datasets.data_files import SPLIT_KEYWORDS
from datasets.fingerprint import Hasher
from huggingface_hub import HfApi
from PIL import Image
from transformers import BaseImageProcessor

# "val", "dev", "validation" -> "validation"; "test", "eval" -> "test"...: the names datasets recognises in files.
SPLIT_OF_KEYWORD = {keyword: str(split) for split, keywords in SPLIT_KEYWORDS.items() for keyword in keywords}


def load_image_dataset(
    name_or_path: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
    split: str = "train",
    revision: str | None = None,
    config_name: str | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """A `datasets.Dataset` from a Dataset, a Hub name, a `.parquet` file, or a folder of parquet files or images.

    A `.parquet` file is one split: the one its name says (`test.parquet`, `cifar-train.parquet`, by the split
    keywords `datasets` itself uses), else `train`. Asking it for another split is an error, so that test images
    are never recorded, or evaluated, as another split. A folder's parquet files (and its subfolders') are picked
    by the same rule. `revision` pins a Hub dataset to a branch, tag or commit; `config_name` picks one of its
    configurations. A `DatasetDict` gives its `split`.
    """
    if isinstance(name_or_path, datasets.DatasetDict):
        if split not in name_or_path:
            raise ValueError(f"The DatasetDict has no {split!r} split; its splits are {list(name_or_path)}.")
        return require_dataset(name_or_path[split])
    if not isinstance(name_or_path, (str, os.PathLike)):
        return require_dataset(name_or_path)
    dataset = _load(name_or_path, split, revision, config_name, **load_kwargs)
    if len(dataset) == 0:
        raise ValueError(f"The {split!r} split of {name_or_path} has no rows: there is nothing to read.")
    return dataset


def require_dataset(dataset: Any) -> datasets.Dataset:
    """`dataset` itself if it is a `datasets.Dataset`; anything else is refused with what to pass instead."""
    if isinstance(dataset, datasets.Dataset):
        return dataset
    if isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError(
            "A streaming (iterable) dataset has no random access, which class sampling, sharding across processes "
            "and resumable runs need. Load it without streaming=True, or materialise the part you need: "
            "datasets.Dataset.from_generator(lambda: (yield from stream.take(N)), features=stream.features)."
        )
    if isinstance(dataset, datasets.DatasetDict):
        raise TypeError(f"Pass one split of the DatasetDict (e.g. dataset['test']); it has {list(dataset)}.")
    raise TypeError(f"Expected a datasets.Dataset, a Hub name or a local path; got {type(dataset).__name__}.")


def hub_dataset_commit(name: str, revision: str | None) -> str | None:
    """The commit a Hub dataset's `revision` (default: its main branch) points at now, or None when the Hub cannot
    say (offline, or not a Hub dataset). Recorded in provenance so the exact data can be loaded again."""
    try:
        return HfApi().dataset_info(name, revision=revision).sha
    except Exception:  # offline, unreachable, private or no Hub id: the given revision is all we know
        return None


def is_hub_dataset(name_or_path: Any) -> bool:
    """Whether `name_or_path` names a Hub dataset: a name that is no local path (not a Dataset object either)."""
    return isinstance(name_or_path, (str, os.PathLike)) and not Path(name_or_path).exists()


def pinned_revision(name_or_path: Any, revision: str | None) -> str | None:
    """For a Hub dataset, the commit `revision` (default: the main branch) stands for now, so that every read of it
    and the record of it see one commit; None for local or in-memory data, which has no revisions."""
    if is_hub_dataset(name_or_path):
        return hub_dataset_commit(str(name_or_path), revision) or revision
    return None


def _load(
    name_or_path: str | os.PathLike, split: str, revision: str | None, config_name: str | None, **load_kwargs: Any
) -> datasets.Dataset:
    path = Path(name_or_path)
    if path.suffix == ".parquet" and path.is_file():
        own_split = parquet_file_split(path)
        if SPLIT_OF_KEYWORD.get(split, split) != own_split:
            raise ValueError(
                f"{path.name} holds the {own_split!r} split (by its name), not {split!r}. Give the folder that also "
                f"holds the {split!r} split's parquet file, or ask for split {own_split!r} if these are the images you "
                "mean."
            )
        return _load_parquet([path], split, **load_kwargs)
    if path.is_dir():
        files = sorted([*path.glob("*.parquet"), *path.glob("*/*.parquet")])
        wanted = SPLIT_OF_KEYWORD.get(split, split)
        parquet = [file for file in files if parquet_file_split(file) == wanted]
        if parquet:
            return _load_parquet(parquet, split, **load_kwargs)
        if files:
            held = sorted({parquet_file_split(file) for file in files})
            raise ValueError(f"{path} has no parquet file of the {split!r} split; the splits it holds are {held}.")
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, **load_kwargs)
    if config_name is not None:
        load_kwargs["name"] = config_name
    dataset = datasets.load_dataset(str(name_or_path), split=split, revision=revision, **load_kwargs)
    _check_the_commit_read(dataset, str(name_or_path), revision)
    return dataset


COMMIT = re.compile(r"[0-9a-f]{40}")


def _check_the_commit_read(dataset: datasets.Dataset, name: str, revision: str | None) -> None:
    """Offline, datasets reads the latest copy of a Hub dataset in its cache, whatever commit was asked for (it says
    so in a log line): refuse another commit than a pinned one, so that no record names a commit that was not
    read. The commit read is the one in the cache's folder names (`.../<config>/<version>/<commit>/...`)."""
    if not revision or not COMMIT.fullmatch(revision):
        return
    read = {part for file in dataset.cache_files for part in Path(file["filename"]).parts if COMMIT.fullmatch(part)}
    if read and revision not in read:
        raise ValueError(
            f"{name} was read at commit {min(read)[:12]}, not at {revision[:12]} as asked: offline, datasets reads "
            f"the latest copy in its cache, whichever commit is asked for. Read it online, or ask for commit "
            f"{min(read)}."
        )


def _load_parquet(files: list[Path], split: str, **load_kwargs: Any) -> datasets.Dataset:
    rows = 0
    for file in files:
        try:
            rows += pyarrow.parquet.ParquetFile(file).metadata.num_rows
        except pyarrow.ArrowException as error:  # pyarrow's message does not name the file
            raise ValueError(
                f"{file} is not a readable parquet file ({error}). Write it again (dataset.to_parquet), or give "
                "the images' folder instead."
            ) from error
    if rows == 0:  # datasets' own error is vague
        raise ValueError(f"{', '.join(file.name for file in files)} has no rows: there is nothing to read.")
    return datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split, **load_kwargs)


def parquet_file_split(path: Path) -> str:
    """The split a parquet file's name announces (`test.parquet`, `cifar10-test-00000.parquet`), else `train`."""
    words = re.split(r"[^a-z]+", path.stem.lower())
    return next((SPLIT_OF_KEYWORD[word] for word in words if word in SPLIT_OF_KEYWORD), "train")


def dataset_name(dataset: datasets.Dataset, source: Any = None) -> str | None:
    """What to call a dataset in provenance: the name or path it was loaded from, else its builder's name unless
    that is a generic loader ("parquet", "imagefolder", ...) that says nothing about the data."""
    if source is not None:
        # Local data is named by its base name, marked "./": provenance is published with a module, and an absolute
        # path would tell the world about the user's machine (and look like nothing the Hub knows).
        return f"./{Path(source).resolve().name}" if Path(source).exists() else str(source)
    builder_name = dataset.info.dataset_name
    generic = builder_name in (None, "parquet", "imagefolder", "csv", "json", "arrow", "generator", "text")
    return None if generic else builder_name


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """A hash of the dataset's content and the transforms applied to it (datasets' public `Hasher`), recorded in
    provenance to recognise the same data on a rerun."""
    return Hasher.hash(dataset)


def dataset_split(dataset: datasets.Dataset, default: str) -> str:
    """The split a Dataset object was loaded as (datasets records it), else `default`."""
    return str(dataset.split) if dataset.split is not None else default


def find_columns(
    dataset: datasets.Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """The image column (an `Image` feature) and the label column (a `ClassLabel`), unless given; a dataset with
    several of a kind must say which (a guess could measure the wrong classes)."""
    return find_image_column(dataset, image_column), find_label_column(dataset, label_column)


def find_image_column(dataset: datasets.Dataset, image_column: str | None = None) -> str:
    """`image_column`, checked, or the dataset's one `Image` column."""
    features = dataset.features
    if image_column is not None:
        if image_column not in features:
            raise ValueError(f"The dataset has no image column {image_column!r}; its columns are {list(features)}.")
        return image_column
    images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not images:
        raise ValueError(
            f"No image column found among {list(features)} (none has the datasets.Image feature). "
            "Pass image_column=... or cast the column with dataset.cast_column(name, datasets.Image())."
        )
    if len(images) > 1:
        raise ValueError(
            f"The dataset has several image columns, {images}: say which one holds the images with image_column=... "
            "(--image-column), or keep one with dataset.select_columns([...])."
        )
    return images[0]


def find_label_column(dataset: datasets.Dataset, label_column: str | None = None) -> str:
    """`label_column`, checked (a `ClassLabel`: its names are matched to a model's labels), or the dataset's one
    `ClassLabel` column."""
    features = dataset.features
    if label_column is not None:
        if label_column not in features:
            raise ValueError(f"The dataset has no label column {label_column!r}; its columns are {list(features)}.")
        if isinstance(features[label_column], datasets.Image):
            raise ValueError(f"The column {label_column!r} holds images, not labels: give the ClassLabel column.")
        if not isinstance(features[label_column], datasets.ClassLabel):
            raise ValueError(
                f"The label column {label_column!r} is not a ClassLabel, so its values have no class names to match "
                f"the model's labels. Run dataset = dataset.class_encode_column({label_column!r}) first."
            )
        return label_column
    labels = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if not labels:
        raise ValueError(
            f"No label column found among {list(features)} (none has the datasets.ClassLabel feature). "
            "Pass label_column=... or run dataset.class_encode_column(name)."
        )
    if len(labels) > 1:  # e.g. CIFAR-100's fine_label and coarse_label
        raise ValueError(
            f"The dataset has several ClassLabel columns, {labels}: say which one holds the classes with "
            "label_column=... (--label-column), or keep one with dataset.select_columns([...])."
        )
    return labels[0]


def only_columns(
    dataset: datasets.Dataset, image_column: str | None = None, label_column: str | None = None
) -> datasets.Dataset:
    """`dataset` with only its image and label columns, as given or found: a function that finds them itself then
    finds exactly those. Unchanged (its fingerprint too) when they are the ones it would find anyway."""
    if image_column is None and label_column is None:
        return dataset
    columns = find_columns(dataset, image_column, label_column)
    try:
        if find_columns(dataset) == columns:
            return dataset
    except ValueError:  # several of a kind: the choice is needed
        pass
    return dataset.select_columns(list(columns))


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
    label_column = find_label_column(dataset, label_column)
    names = label_names(dataset, label_column)
    missing = [label for label in labels if label not in names]
    if missing:
        raise ValueError(f"The dataset has no classes {missing}; its classes are {names}.")
    wanted = {names.index(label): position for position, label in enumerate(labels)}
    subset = dataset.filter(lambda row: row[label_column] in wanted)
    features = subset.features.copy()
    features[label_column] = datasets.ClassLabel(names=list(labels))
    return subset.map(lambda row: {label_column: wanted[row[label_column]]}, features=features)


def rows_of_classes(
    dataset: datasets.Dataset, labels: Sequence[str], label_column: str | None = None, limit: int | None = None
) -> datasets.Dataset:
    """The rows whose label is one of `labels` (names), in order, the first `limit` of them when given (the dataset
    itself when that is every row); labels and features are kept as they are."""
    label_column = find_label_column(dataset, label_column)
    wanted = set(labels)
    ids = torch.tensor([index for index, name in enumerate(label_names(dataset, label_column)) if name in wanted])
    rows = torch.isin(label_ids(dataset, label_column), ids).nonzero().flatten()[:limit]
    return dataset if len(rows) == len(dataset) else dataset.select(rows.tolist())


def iterate_batches(
    dataset: datasets.Dataset,
    processor: BaseImageProcessor,
    *,
    image_column: str,
    label_column: str | None,
    batch_size: int = 256,
    image_mode: str = "RGB",
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
    image_size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(pixel_values (B, C, H, W), labels (B,))` in dataset order, preprocessed by `processor` (labels -1,
    unlabelled, where `label_column` is None: images read for themselves).

    Images are converted to `image_mode` first ("RGB" for 3 input channels, "L" for 1). Each image is decoded
    here, one by one, so that a broken one is reported by its row number: `rows` gives the numbers of `dataset`'s
    rows in the dataset the user passed, when `dataset` is a selection of it. With `image_size`, every image must
    be `image_size` x `image_size`: nothing is resized behind the user's back.
    """
    columns = undecoded(
        dataset.select_columns([image_column] if label_column is None else [image_column, label_column]), image_column
    )
    numbers = range(len(dataset)) if rows is None else list(rows)
    collate = _Collate(columns, processor, image_column, label_column, numbers, image_mode, image_size)
    loader = torch.utils.data.DataLoader(
        range(len(columns)), batch_size=batch_size, collate_fn=collate, num_workers=num_workers
    )
    yield from loader


@dataclass
class _Collate:
    """`iterate_batches`' batch maker: a plain object rather than a closure, so that DataLoader workers started by
    spawn (macOS, Windows, newer Pythons) can receive it."""

    columns: datasets.Dataset
    processor: BaseImageProcessor
    image_column: str
    label_column: str | None
    numbers: Sequence[int]
    image_mode: str
    image_size: int | None

    def __call__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.columns[positions]
        images = [
            decode_image(value, self.numbers[position], self.image_mode, self.image_size, self.image_column)
            for position, value in zip(positions, batch[self.image_column], strict=True)
        ]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        if self.label_column is None:
            return pixel_values, torch.full((len(images),), UNLABELLED)
        return pixel_values, torch.tensor(batch[self.label_column])


_IMAGE = datasets.Image()


def undecoded(dataset: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """`dataset` with its images left as datasets stores them (bytes or a path), for `decode_image` to decode one by
    one and name the row of one that cannot be."""
    if isinstance(dataset.features[image_column], datasets.Image):
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def first_image(dataset: datasets.Dataset, image_column: str) -> Image.Image:
    """The first row's image, decoded whether the column decodes its images or not (`Image(decode=False)` holds
    their bytes or paths); one that cannot be decoded is an error naming row 0."""
    value = undecoded(dataset.select([0]), image_column)[0][image_column]  # decoded here, where errors are caught
    try:
        return _IMAGE.decode_example(value) if isinstance(value, dict) else value
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Row 0: its image cannot be decoded ({error}). Fix or drop that row.") from error


def decode_image(value: Any, row: int, mode: str, size: int | None = None, column: str = "image") -> Image.Image:
    """One image of the dataset, decoded (datasets' own decoder) and converted to `mode`; a truncated or corrupt
    file, or an image of the wrong size, is an error that names its row."""
    try:
        image = _IMAGE.decode_example(value) if isinstance(value, dict) else value
        image = image.convert(mode)  # PIL decodes lazily: a truncated file fails here
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Row {row}: its image cannot be decoded ({error}). Fix or drop that row.") from error
    if size is not None and image.size != (size, size):
        width, height = image.size
        raise ValueError(
            f"Row {row}: its image is {width}x{height}, but the model takes {size}x{size} and the statistics describe "
            "the model at its own input size. Resize the dataset's images first, e.g. "
            f"dataset.map(lambda row: {{'{column}': row['{column}'].resize(({size}, {size}))}})."
        )
    return image


def fixed_input_size(config: Any) -> int | None:
    """The size every image must have for a decomposition's passes: a small-input (CIFAR-stem) model's own, since
    its statistics describe the model at that size; None for an ImageNet-stem model, whose processor resizes and
    crops any image as it did in training."""
    return config.image_size if config.stem_type == "cifar" else None


def _some(names: list[str], limit: int) -> str:
    """At most `limit` names, and how many there are when that is not all of them."""
    return str(names) if len(names) <= limit else f"{str(names[:limit])[:-1]}, ...] ({len(names)} in all)"


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
            f"The dataset has labels the model does not know: {_some(unknown, 5)}. The model's labels are "
            f"{_some(list(by_name), 10)}. Use a dataset of the model's classes (all or some of them), or keep the rows "
            "of those: hf_modular.data.select_classes(dataset, [names...])."
        )
    return torch.tensor([by_name.get(name, unknown_as) for name in dataset_labels] + [UNLABELLED])
