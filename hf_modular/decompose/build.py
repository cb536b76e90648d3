"""Turn a strategy's decision into a module model, and give a built module its labels and provenance."""

from __future__ import annotations

import torch

from ..distributed import device_and_dtype
from ..models import ModularResNetConfig, ModularResNetForImageClassification
from ..models.configuration_modular_resnet import WEIGHT_RECORDS
from ..module import REST_LABEL, ModuleProvenance


def build_module(
    parent: ModularResNetForImageClassification,
    keep: dict[str, torch.Tensor],
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    *,
    head_type: str = "linear",
) -> ModularResNetForImageClassification:
    """The parent's weights, a two-way head ((R, F) weight and (R,) bias, own class first; see `decompose.heads`),
    and a mask on every site where `keep` ((C, H, W) bool per site, True where kept) drops a node."""
    masked_sites = {site: kept for site, kept in keep.items() if not bool(kept.all())}
    config = ModularResNetConfig.from_dict(
        {
            **parent.config.to_dict(),
            "id2label": {0: "own", 1: REST_LABEL},  # named by `label_module`
            "label2id": {"own": 0, REST_LABEL: 1},
            "mask_shapes": {site: list(kept.shape) for site, kept in masked_sites.items()} or None,
            "head_type": head_type,
            "head_rows": len(head_weight) if head_type == "softmax" else None,
            "module": None,
            **WEIGHT_RECORDS,  # the parent's; the module's provenance names the parent
        }
    )
    module = ModularResNetForImageClassification(config).to(*device_and_dtype(parent))
    state = {k: v for k, v in parent.state_dict().items() if not k.startswith("fc.") and not k.endswith(".mask")}
    state["fc.weight"], state["fc.bias"] = head_weight, head_bias
    state.update({f"{site}.mask": kept for site, kept in masked_sites.items()})
    module.load_state_dict(state)
    return module.eval()


def label_module(
    module: ModularResNetForImageClassification, provenance: ModuleProvenance
) -> ModularResNetForImageClassification:
    """Give a 2-output model a module's labels (`{0: label, 1: "rest"}`) and its provenance."""
    label = provenance.target_label
    module.config.id2label = {0: label, 1: REST_LABEL}
    module.config.label2id = {label: 0, REST_LABEL: 1}
    module.config.provenance = provenance
    return module
