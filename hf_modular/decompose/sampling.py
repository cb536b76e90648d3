"""Which training inputs each module observes: its own class (concern identification) and, at a fixed ratio,
negatives spread evenly over the other classes (tangling identification).

Every class's rows are shuffled once with the seed. A module takes the first `samples_per_class` rows of its class,
and the first rows of each other class as negatives, so the modules' inputs overlap as much as possible and one
forward pass over their union serves all modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplePlan:
    """The rows of the dataset to observe and, for each, which modules use it.

    Rows are ordered by class, then by their rank in the class's shuffled order, and fall into *groups*: runs of
    consecutive rows that every module either uses entirely or not at all. The statistics pass reduces each group
    once, and a module's view is the union of its groups.

    Attributes:
        rows: dataset row indices to run, in order; shape (U,).
        own: (U, M) bool, row u is an own-class input of module m.
        negative: (U, M) bool, row u is a negative input of module m.
        classes: the model class index of each module, (M,).
        group: (U,) the group of each row; groups are contiguous and numbered in order.
        group_own: (G, M) bool, module m takes group g as own-class inputs.
        group_negative: (G, M) bool, module m takes group g as negatives.
    """

    rows: torch.Tensor
    own: torch.Tensor
    negative: torch.Tensor
    classes: list[int]
    group: torch.Tensor
    group_own: torch.Tensor
    group_negative: torch.Tensor

    @classmethod
    def from_usage(
        cls, rows: torch.Tensor, own: torch.Tensor, negative: torch.Tensor, classes: list[int]
    ) -> SamplePlan:
        """Build the groups from per-row usage: a new group starts wherever the usage pattern changes."""
        usage = torch.cat([own, negative], dim=1)
        changes = torch.ones(len(rows), dtype=torch.bool)
        changes[1:] = (usage[1:] != usage[:-1]).any(1)
        group = changes.cumsum(0) - 1
        starts = changes.nonzero().flatten()
        return cls(rows, own, negative, list(classes), group, own[starts], negative[starts])


def even_share(total: int, parts: int, index: int) -> int:
    """Share `index` of `total` split into `parts` shares that differ by at most one, the larger ones first."""
    return total // parts + (1 if index < total % parts else 0)


def plan_samples(
    labels: torch.Tensor,
    classes: list[int],
    num_classes: int,
    *,
    samples_per_class: int,
    negatives_ratio: float,
    seed: int,
    class_names: list[str] | None = None,
) -> SamplePlan:
    """Plan the observed rows for modules of `classes`, given every row's model class index in `labels` (N,)."""
    generator = torch.Generator().manual_seed(seed)
    by_class = []
    for k in range(num_classes):
        members = (labels == k).nonzero().flatten()
        by_class.append(members[torch.randperm(len(members), generator=generator)])
    for c in classes:
        if len(by_class[c]) == 0:
            name = class_names[c] if class_names else c
            raise ValueError(
                f"Class {name!r} has no examples in the dataset, so its module cannot be built. Drop it with "
                "classes=[...] or use a split that contains it."
            )

    # take[k, m]: how many of class k's shuffled rows module m uses.
    take = torch.zeros(num_classes, len(classes), dtype=torch.long)
    for m, c in enumerate(classes):
        own = min(samples_per_class, len(by_class[c]))
        take[c, m] = own
        wanted = round(negatives_ratio * own)
        # Spread evenly over the other classes that have rows (a dataset of some of the model's classes has none of
        # the rest); the remainder goes to the classes that follow c, so no class is always favoured.
        order = [(c + 1 + i) % num_classes for i in range(num_classes - 1)]
        order = [k for k in order if len(by_class[k]) > 0]
        if not order or wanted == 0:
            continue
        for i, k in enumerate(order):
            take[k, m] = min(even_share(wanted, len(order), i), len(by_class[k]))

    rows, own_rows, negative_rows = [], [], []
    for k in range(num_classes):
        needed = int(take[k].max())
        if needed == 0:
            continue
        rank = torch.arange(needed)[:, None]
        uses = rank < take[k][None, :]  # (needed, M)
        is_own = torch.tensor([c == k for c in classes])[None, :]
        rows.append(by_class[k][:needed])
        own_rows.append(uses & is_own)
        negative_rows.append(uses & ~is_own)
    return SamplePlan.from_usage(torch.cat(rows), torch.cat(own_rows), torch.cat(negative_rows), classes)
