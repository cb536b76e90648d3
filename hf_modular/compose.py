"""Composition of class modules by the paper's voting rule."""

from __future__ import annotations

import torch


def own_class_probabilities(module_logits: torch.Tensor) -> torch.Tensor:
    """(B, M, 2) logits of M binary modules (own class first) -> (B, M) probability of each module's own class."""
    return module_logits.softmax(dim=-1)[..., 0]


def vote(module_logits: torch.Tensor) -> torch.Tensor:
    """The paper's rule over (B, M, 2) module logits -> (B,) index of the winning module.

    If exactly one module decides "own class" (its own logit beats its rest logit), it wins. If none or several do,
    the module with the highest own-class probability wins. (A claim is an own-class probability above 0.5, so the
    single claimant also has the highest probability: the rule always agrees with the argmax. It is spelled out
    because that is how the paper states it, and a calibrated variant may not share the property.)
    """
    probabilities = own_class_probabilities(module_logits)
    claims = module_logits[..., 0] > module_logits[..., 1]
    single = claims.sum(dim=1) == 1
    return torch.where(single, claims.float().argmax(dim=1), probabilities.argmax(dim=1))


def top_k(module_logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(B, M, 2) -> (B, min(k, M)): the modules with the highest own-class probabilities, best first."""
    probabilities = own_class_probabilities(module_logits)
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1).indices
