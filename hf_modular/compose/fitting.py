"""Fit a composition of strangers: modules from parents that never saw each other's classes.

A module says "not my class" only to the classes its parent knew. Composed with modules of another parent, it has no
reason to reject their classes. `fit` refits each member's own-vs-rest head by logistic regression on the member's
pooled features (its trunk stays frozen and its repo unchanged), over a small labelled sample of the composition's
classes, so that each member's probability is calibrated against every other member's class. The composition
stores the fitted heads, the data they were fitted on and the members they were fitted for; editing the members
afterwards makes the fit stale, and the composition then refuses to answer until it is fitted again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import datasets
import torch
import torch.nn.functional as F

from ..console import progress_bar
from ..data import (
    dataset_fingerprint,
    dataset_name,
    dataset_split,
    find_columns,
    find_image_column,
    find_label_column,
    is_hub_dataset,
    iterate_batches,
    label_ids,
    label_names,
)
from ..distributed import (
    DistributedState,
    concat_over_processes,
    distributed_state,
    split_rows,
    warn_if_off_the_process_device,
)
from ..models import ModularResNetForImageClassification, image_mode
from ..module import weights_sha256
from .execution import Head, tensor_versions
from .members import composed_image_processor, prepare_inputs


def sample_for_fit(
    dataset: datasets.Dataset,
    labels: Sequence[str],
    images_per_class: int,
    seed: int,
    other_classes: str = "refuse",
) -> tuple[datasets.Dataset, torch.Tensor]:
    """`images_per_class` seeded random rows of each of `labels`' classes, and their indices into `labels`. Images
    of other classes are refused (`other_classes="refuse"`: they may be a mistake) or skipped (`"skip"`)."""
    if other_classes not in ("refuse", "skip"):
        raise ValueError(f"other_classes must be 'refuse' or 'skip', not {other_classes!r}.")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}.")
    label_column = find_label_column(dataset)
    names = label_names(dataset, label_column)
    missing = [label for label in labels if label not in names]
    if missing:
        raise ValueError(
            f"The fit dataset has no images of {missing}: every member's class needs labelled images. Its classes "
            f"are {names}."
        )
    extra = [name for name in names if name not in labels]
    ids = label_ids(dataset, label_column)
    if (
        other_classes == "refuse"
        and extra
        and bool(torch.isin(ids, torch.tensor([names.index(n) for n in extra])).any())
    ):
        raise ValueError(
            f"The fit dataset has images of {extra[:5]}, classes no member answers. Select the composition's classes "
            "first (hf_modular.data.select_classes(dataset, composed.labels)), or pass other_classes='skip'."
        )
    generator = torch.Generator().manual_seed(seed)
    rows, targets = [], []
    for index, label in enumerate(labels):
        members = (ids == names.index(label)).nonzero().flatten()
        if len(members) < images_per_class:
            raise ValueError(
                f"Class {label!r} has {len(members)} images in the fit dataset; fitting takes images_per_class="
                f"{images_per_class}. Lower images_per_class or add images of {label!r}."
            )
        rows.append(members[torch.randperm(len(members), generator=generator)[:images_per_class]])
        targets.append(torch.full((images_per_class,), index))
    rows, targets = torch.cat(rows), torch.cat(targets)
    order = rows.argsort()  # read the dataset in its own order
    return dataset.select(rows[order].tolist()), targets[order]


@torch.inference_mode()
def pooled_features(
    members: Sequence[ModularResNetForImageClassification],
    composed_config: Any,
    dataset: datasets.Dataset,
    *,
    batch_size: int,
    state: DistributedState | None = None,
    progress: bool,
) -> list[torch.Tensor]:
    """Each member's pooled features (N, F_m) on `dataset`'s images, each member seeing its own preprocessing; the
    rows are shared between the processes of `state` and every process gets all of them, in order."""
    state = distributed_state(state)
    warn_if_off_the_process_device(members[0], state, "fit")
    image_column = find_image_column(dataset)
    with split_rows(state, len(dataset)) as rows:
        shard = dataset.select(rows)
    batches = iterate_batches(
        shard,
        composed_image_processor(composed_config),
        image_column=image_column,
        label_column=None,  # the targets come from sample_for_fit
        batch_size=batch_size,
        image_mode=image_mode(composed_config.num_channels),
        rows=rows,
    )
    features: list[list[torch.Tensor]] = [[] for _ in members]
    progress = progress and state.is_main_process
    for pixel_values, _ in progress_bar(batches, total=-(-len(shard) // batch_size), disable=not progress, desc="fit"):
        for member, prepared, found in zip(members, prepare_inputs(pixel_values, members), features, strict=True):
            pooled = member.forward_head(member.forward_features(prepared), pre_logits=True)
            # The regression is small and its result is stored as JSON: it runs on the CPU in float64, wherever the
            # members are; the fitted heads are then cached on each member's device and in its dtype.
            found.append(pooled.float().cpu())
    widths = [member.config.num_features for member in members]
    return [
        concat_over_processes(torch.cat(found) if found else torch.empty(0, width), state)
        for found, width in zip(features, widths, strict=True)
    ]


def logistic_regression(features: torch.Tensor, targets: torch.Tensor, l2: float) -> tuple[torch.Tensor, float]:
    """(N, F) features and (N,) 0/1 targets -> the weight (F,) and bias of `sigmoid(w . x + b)` that maximise the
    likelihood with an L2 penalty `l2 * |w|^2` (L-BFGS, in float64). Callable under `torch.inference_mode`."""
    with torch.inference_mode(False), torch.enable_grad():  # copies: inference tensors cannot be saved for backward
        return _logistic_regression(features.double().clone(), targets.double().clone(), l2)


def _logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, float]:
    scale = x.std(0).clamp_min(1e-6)  # fitted on standardised features, returned for the raw ones
    center = x.mean(0)
    standard = (x - center) / scale
    parameters = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([parameters], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        logits = standard @ parameters[:-1] + parameters[-1]
        value = F.binary_cross_entropy_with_logits(logits, y) + l2 * parameters[:-1].square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    weight = parameters[:-1].detach() / scale
    bias = float(parameters[-1].detach() - (weight * center).sum())
    return weight.float(), bias


def fit_platt(margins: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Platt scaling per module: (N, M) margins (own logit minus rest logit) and (N, M) 0/1 targets -> (M, 2)
    `[scale, bias]` so that `sigmoid(scale * margin + bias)` matches each module's class frequency: a logistic
    regression on one feature, the margin, without penalty."""
    fitted = [logistic_regression(margins[:, [m]], targets[:, m], l2=0.0) for m in range(margins.shape[1])]
    return torch.tensor([[float(weight[0]), bias] for weight, bias in fitted])


def fit_heads(
    members: Sequence[ModularResNetForImageClassification],
    labels: Sequence[str],
    composed_config: Any,
    dataset: datasets.Dataset,
    *,
    dataset_source: Any = None,
    dataset_revision: str | None = None,
    dataset_config: str | None = None,
    images_per_class: int = 100,
    seed: int = 0,
    l2: float = 1e-3,
    batch_size: int = 256,
    other_classes: str = "refuse",
    state: DistributedState | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Refit every member's own-vs-rest head on the composition's classes; returns the fit record (see module doc)."""
    if len(members) < 2 or images_per_class < 2:
        raise ValueError(
            "Fitting learns each member's class against the other members' classes: it needs at least two members "
            f"and images_per_class >= 2 (got {len(members)} members, images_per_class={images_per_class})."
        )
    started = time.perf_counter()
    sample, targets = sample_for_fit(dataset, labels, images_per_class, seed, other_classes)
    features = pooled_features(members, composed_config, sample, batch_size=batch_size, state=state, progress=progress)
    heads = {}
    for index, (label, found) in enumerate(zip(labels, features, strict=True)):
        weight, bias = logistic_regression(found, targets == index, l2)
        heads[label] = {"weight": weight.tolist(), "bias": bias}
    return {
        "method": "head",
        "heads": heads,
        "members": [
            {"label": label, **fingerprint_record(member)} for label, member in zip(labels, members, strict=True)
        ],
        "data": {
            "name_or_path": dataset_name(dataset, dataset_source),
            "split": dataset_split(dataset, "train"),
            "revision": dataset_revision,  # for a Hub dataset, the commit that was read
            "config_name": dataset_config if is_hub_dataset(dataset_source) else None,  # local data has none
            "fingerprint": dataset_fingerprint(dataset),
            "images_per_class": images_per_class,
            "images": len(sample),
            **dict(zip(("image_column", "label_column"), find_columns(dataset), strict=True)),
            "seed": seed,
        },
        "l2": l2,
        "seconds": time.perf_counter() - started,
    }


def fitted_heads(fit: dict[str, Any], labels: Sequence[str], reference: Sequence[torch.Tensor]) -> list[Head]:
    """The fit's heads as `Head`s, in `labels`' order (`reference[i]`: a tensor of member i, for dtype and device).
    A fitted head has two rows, the fitted one and zeros, so its own-class probability is `sigmoid(w . x + b)`."""
    heads = []
    with torch.inference_mode(False):  # built once and reused: they must also serve calls that train
        for label, like in zip(labels, reference, strict=True):
            heads.append(_fitted_head(fit["heads"][label], like))
    return heads


def _fitted_head(fitted: dict[str, Any], like: torch.Tensor) -> Head:
    """A fitted head as a `Head` on `like`'s device and dtype."""
    weight = torch.tensor(fitted["weight"], dtype=torch.float32)
    bias = torch.tensor([fitted["bias"], 0.0], dtype=torch.float32)
    rows = torch.stack([weight, torch.zeros_like(weight)])
    return Head(rows.to(like), bias.to(like), "linear")


# The precisions a member's weights are fingerprinted in, by the key a record stores each under. A member loaded or
# moved to a lower precision since it was recorded is the same member when its weights, rounded the same way, hash
# alike; one hash in float32 would call it changed.
FINGERPRINT_KEYS = {
    torch.float32: "weights_sha256",
    torch.bfloat16: "weights_sha256_bfloat16",
    torch.float16: "weights_sha256_float16",
}


def member_fingerprint(member: ModularResNetForImageClassification, dtype: torch.dtype = torch.float32) -> str:
    """The member's weights sha256 with its floating-point tensors in `dtype` (wherever it runs), computed once per
    set of tensor versions and dtype (it is checked on every answer)."""
    key = tensor_versions(member)
    cached = getattr(member, "_hf_modular_fingerprints", None)
    if cached is None or cached[0] != key:
        cached = member._hf_modular_fingerprints = (key, {})
    if dtype not in cached[1]:
        cached[1][dtype] = weights_sha256(member, dtype=dtype)
    return cached[1][dtype]


def fingerprint_record(member: ModularResNetForImageClassification) -> dict[str, str]:
    """What a record stores to recognise `member` later, in any of the precisions it may be loaded in."""
    return {key: member_fingerprint(member, dtype) for dtype, key in FINGERPRINT_KEYS.items()}


def is_recorded_member(record: dict[str, Any], member: ModularResNetForImageClassification) -> bool:
    """Whether `member` is the one `record` (a `fingerprint_record`; an older one has the float32 hash only) was
    made for, in some precision both have."""
    return any(
        record.get(key) is not None and record[key] == member_fingerprint(member, dtype)
        for dtype, key in FINGERPRINT_KEYS.items()
    )


def stale_members(fit: dict[str, Any], labels: Sequence[str], members: Sequence[Any]) -> list[str]:
    """The labels whose member is not the one the fit was made for (replaced, added or removed since)."""
    fitted = {entry["label"]: entry for entry in fit["members"]}
    current = dict(zip(labels, members, strict=True))
    return sorted(
        label
        for label in fitted.keys() | current.keys()
        if label not in fitted or label not in current or not is_recorded_member(fitted[label], current[label])
    )
