"""What is measured of a module: how much of the parent it keeps (masked fraction, Jaccard index, parameters,
multiply-accumulates) and a fingerprint of its tensors.

The model is asked for its structure (`model.blocks()`, each block's `conv_names`/`act_names`), never re-derived.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn


def masked_fraction(keep: dict[str, torch.Tensor]) -> float:
    """Share of all site nodes that the module masks (`keep`: site -> (C, H, W) bool, True where kept)."""
    total = sum(mask.numel() for mask in keep.values())
    return 1.0 - sum(int(mask.sum()) for mask in keep.values()) / total


def jaccard_index(parent: nn.Module, keep: dict[str, torch.Tensor]) -> float:
    """Retained nodes and edges of the module over those of the parent (the paper's measure; the module is a subset).

    Nodes are ReLU-site positions; edges are the convolutions' (input node, output node) connections, counted
    exactly by convolving the kept-node indicators with all-ones kernels. The stem conv reads the image, whose
    nodes are all kept. The head is not counted: the module's 2-way head is new, not a part of the parent's.
    """
    full = {site: torch.ones_like(mask) for site, mask in keep.items()}
    module_nodes, parent_nodes = sum(int(m.sum()) for m in keep.values()), sum(m.numel() for m in keep.values())
    module_edges, parent_edges = _edges(parent, keep), _edges(parent, full)
    return (module_nodes + module_edges) / (parent_nodes + parent_edges)


def _edges(model: nn.Module, keep: dict[str, torch.Tensor]) -> int:
    size = model.config.image_size
    image = torch.ones(model.config.num_channels, size, size, dtype=torch.bool)
    total = _conv_edges(model.conv1, image, keep["act1"])
    previous = keep["act1"]
    blocks = model.blocks()
    if not isinstance(model.maxpool, nn.Identity):  # a max-pool reads every stem node; its output is the block input
        previous = torch.ones(previous.shape[0], *keep[f"{blocks[0][0]}.act1"].shape[1:], dtype=torch.bool)
    for name, block in blocks:
        acts = [keep[f"{name}.{act}"] for act in block.act_names]
        for conv_name, source, target in zip(block.conv_names, [previous, *acts[:-1]], acts, strict=True):
            total += _conv_edges(getattr(block, conv_name), source, target)
        if isinstance(block.downsample, nn.Sequential):
            total += _conv_edges(block.downsample[0], previous, acts[-1])
        previous = acts[-1]
    return total


def _conv_edges(conv: nn.Conv2d, kept_inputs: torch.Tensor, kept_outputs: torch.Tensor) -> int:
    ones = torch.ones(conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size)
    reach = nn.functional.conv2d(kept_inputs[None].float(), ones, stride=conv.stride, padding=conv.padding)[0]
    return int((reach * kept_outputs).sum())


def weights_sha256(model: nn.Module, dtype: torch.dtype | None = None) -> str:
    """A fingerprint of a model's tensors (names, dtypes, shapes and bytes), independent of file format; with
    `dtype`, floating-point tensors are hashed as that dtype (independent of the model's own)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class MacCounter:
    """Counts the multiply-accumulates of every conv and linear layer that runs inside the block, in any model
    (a global hook, so it also sees the shared steps a composition runs). `total` covers the whole batch."""

    def __enter__(self) -> MacCounter:
        self.total = 0
        self._handle = nn.modules.module.register_module_forward_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _count(self, module: nn.Module, inputs, output) -> None:
        if isinstance(module, nn.Conv2d):
            kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            self.total += output.numel() * kernel
        elif isinstance(module, nn.Linear):
            self.total += output.numel() * module.in_features


def count_macs(model: nn.Module, pixel_values: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of `model` on one image of `pixel_values`'s shape (run on the
    model's device, in its dtype)."""
    parameter = next(model.parameters())
    with MacCounter() as counter, torch.inference_mode():
        model(pixel_values[:1].to(device=parameter.device, dtype=parameter.dtype))
    return counter.total


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@dataclass(frozen=True)
class QualityMetric:
    """One figure of `own_vs_rest_quality`, and how the module's card shows and publishes it."""

    key: str  # its key in `own_vs_rest_quality`'s answer
    column: str  # the card table's column
    hub_type: str  # the Hub's metric type, in the card's model-index
    hub_name: str  # its name in the model-index, `{label}` for the module's class
    percent: bool  # shown as a percentage; else with four decimals

    def format(self, value: float | None) -> str:
        """The table cell: "-" for a figure that is undefined (an AUC without negatives) or not recorded (a module
        measured by an earlier release)."""
        if value is None:
            return "-"
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4f}"


# The figures of a module's own decision, in the order its card shows them. A new one is a row here and a key in
# `own_vs_rest_quality`: the card's table and its model-index follow.
OWN_VS_REST_METRICS = (
    QualityMetric("accuracy", "accuracy", "accuracy", "Own-vs-rest accuracy ({label} vs rest)", percent=True),
    QualityMetric("precision", "precision", "precision", "Precision of '{label}'", percent=True),
    QualityMetric("recall", "recall", "recall", "Recall of '{label}'", percent=True),
    QualityMetric("auc", "AUC", "roc_auc", "ROC AUC ({label} vs rest)", percent=False),
    QualityMetric(
        "ece",
        "calibration error (ECE)",
        "expected_calibration_error",
        "Expected calibration error of P({label})",
        percent=False,
    ),
)


def own_vs_rest_quality(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = 10) -> dict[str, float | None]:
    """How good a one-vs-rest decision is: (N,) own-class probabilities and (N,) bool truth ->

    accuracy, precision and recall of "own" at probability > 0.5; AUC (the chance that an own-class image scores
    above another one, ties counting half); ECE (expected calibration error: over `bins` equal-width bins of the
    probability, the image-weighted mean gap between the mean probability and the share of own-class images).
    """
    probabilities, targets = probabilities.double().flatten(), targets.bool().flatten()
    claims = probabilities > 0.5
    hits = (claims & targets).sum().item()
    quality = {
        "accuracy": (claims == targets).double().mean().item(),
        "precision": hits / max(claims.sum().item(), 1),
        "recall": hits / max(targets.sum().item(), 1),
        "auc": _auc(probabilities, targets),  # None when the images hold only one side
    }
    which = (probabilities * bins).long().clamp(max=bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.sum().item() * abs(
                probabilities[inside].mean().item() - targets[inside].double().mean().item()
            )
    quality["ece"] = gap / len(probabilities)
    return quality


def _auc(scores: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Mann-Whitney AUC with tied scores sharing their mean rank; None (JSON null) when a side is empty."""
    positives, negatives = int(targets.sum()), int((~targets).sum())
    if positives == 0 or negatives == 0:
        return None
    order = scores.argsort()
    _, counts = scores[order].unique_consecutive(return_counts=True)
    ends = counts.cumsum(0).double()
    mean_ranks = (ends - (counts.double() - 1) / 2).repeat_interleave(counts)  # 1-based mean rank of each tie group
    ranks = torch.empty_like(mean_ranks)
    ranks[order] = mean_ranks
    return ((ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives)).item()
