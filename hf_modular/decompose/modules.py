"""Turn a strategy's `ModuleSpec` into a module model, and measure how much of the parent it keeps."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from ..configuration_modular_resnet import ModularResNetConfig
from ..modeling_modular_resnet import ModularResNetForImageClassification
from .activation import ModuleSpec

REST_LABEL = "rest"


def build_module(
    parent: ModularResNetForImageClassification, spec: ModuleSpec, metadata: dict[str, Any]
) -> ModularResNetForImageClassification:
    """The parent's weights, the spec's 2-way head, and a mask on every site where the spec drops a node.

    The module's labels are `{0: <class name>, 1: "rest"}`; `config.module` holds `metadata`.
    """
    label = parent.config.id2label[spec.class_index]
    masked_sites = {site: keep for site, keep in spec.keep.items() if not bool(keep.all())}
    config = ModularResNetConfig.from_dict(
        {
            **parent.config.to_dict(),
            "id2label": {0: label, 1: REST_LABEL},
            "label2id": {label: 0, REST_LABEL: 1},
            "mask_shapes": {site: list(keep.shape) for site, keep in masked_sites.items()} or None,
            "module": metadata,
        }
    )
    module = ModularResNetForImageClassification(config)
    state = {k: v for k, v in parent.state_dict().items() if not k.startswith("fc.") and not k.endswith(".mask")}
    state["fc.weight"], state["fc.bias"] = spec.head_weight, spec.head_bias
    state.update({f"{site}.mask": keep for site, keep in masked_sites.items()})
    module.load_state_dict(state)
    return module.eval()


def label_module(
    module: ModularResNetForImageClassification, label: str, metadata: dict[str, Any]
) -> ModularResNetForImageClassification:
    """Give a 2-output model a module's labels (`{0: label, 1: "rest"}`) and provenance."""
    module.config.id2label = {0: label, 1: REST_LABEL}
    module.config.label2id = {label: 0, REST_LABEL: 1}
    module.config.module = metadata
    return module


def masked_fraction(keep: dict[str, torch.Tensor]) -> float:
    """Share of all site nodes that the module masks."""
    total = sum(mask.numel() for mask in keep.values())
    return 1.0 - sum(int(mask.sum()) for mask in keep.values()) / total


def jaccard_index(parent: ModularResNetForImageClassification, keep: dict[str, torch.Tensor]) -> float:
    """Retained nodes and edges of the module over those of the parent (the paper's measure; the module is a subset).

    Nodes are site positions; edges are the convolutions' (input node, output node) connections, counted exactly by
    convolving the kept-node indicators with all-ones kernels. The stem conv reads the image, whose nodes are all
    kept. The head is not counted: the module's 2-way head is new, not a part of the parent's.
    """
    full = {site: torch.ones_like(mask) for site, mask in keep.items()}
    module_nodes, parent_nodes = sum(int(m.sum()) for m in keep.values()), sum(m.numel() for m in keep.values())
    module_edges, parent_edges = _edges(parent, keep), _edges(parent, full)
    return (module_nodes + module_edges) / (parent_nodes + parent_edges)


def _edges(model: ModularResNetForImageClassification, keep: dict[str, torch.Tensor]) -> int:
    size = model.config.image_size
    image = torch.ones(model.config.num_channels, size, size, dtype=torch.bool)
    total = _conv_edges(model.conv1, image, keep["act1"])
    previous = keep["act1"]
    if not isinstance(model.maxpool, nn.Identity):  # a max-pool reads every stem node; its output is the block input
        previous = torch.ones(previous.shape[0], *keep[f"{model.stage_names[0]}.0.act1"].shape[1:], dtype=torch.bool)
    for stage in model.stage_names:
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            acts = [keep[f"{name}.act{k}"] for k in range(1, 4) if hasattr(block, f"act{k}")]
            inputs = [previous, *acts[:-1]]
            for k, (source, target) in enumerate(zip(inputs, acts, strict=True), start=1):
                total += _conv_edges(getattr(block, f"conv{k}"), source, target)
            if isinstance(block.downsample, nn.Sequential):
                total += _conv_edges(block.downsample[0], previous, acts[-1])
            previous = acts[-1]
    return total


def _conv_edges(conv: nn.Conv2d, kept_inputs: torch.Tensor, kept_outputs: torch.Tensor) -> int:
    ones = torch.ones(conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size)
    reach = nn.functional.conv2d(kept_inputs[None].float(), ones, stride=conv.stride, padding=conv.padding)[0]
    return int((reach * kept_outputs).sum())


def weights_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's tensors (names, dtypes, shapes and bytes), independent of file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
