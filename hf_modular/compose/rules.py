"""How the modules' answers become one: the paper's vote, top-k, and calibrated own-class probabilities.

Each rule works on (B, M, 2) module logits, own class first, as `ComposedModel.module_logits` returns them, and
scores them in float32 at least: in float16 every own-class probability above 1 - 2.4e-4 rounds to 1.0, so confident
modules would tie and argmax would pick the first of them.
"""

from __future__ import annotations

import torch

RULES = ("vote", "calibrated")


def own_class_probabilities(module_logits: torch.Tensor) -> torch.Tensor:
    """(B, M, 2) logits of M binary modules (own class first) -> (B, M) probability of each module's own class."""
    return _at_least_float32(module_logits).softmax(dim=-1)[..., 0]


def module_margins(module_logits: torch.Tensor) -> torch.Tensor:
    """(B, M, 2) -> (B, M) own logit minus rest logit, in float32 at least."""
    logits = _at_least_float32(module_logits)
    return logits[..., 0] - logits[..., 1]


def vote(module_logits: torch.Tensor) -> torch.Tensor:
    """The paper's rule over (B, M, 2) module logits -> (B,) index of the winning module.

    If exactly one module decides "own class" (its own logit beats its rest logit), it wins. If none or several do,
    the module with the highest own-class probability wins. (A claim is an own-class probability above 0.5, so the
    single claimant also has the highest probability: the rule always agrees with the argmax. It is spelled out
    because that is how the paper states it, and a calibrated variant may not share the property.)
    """
    margins = module_margins(module_logits)  # ranks as the probabilities do, without their rounding to 1.0
    claims = margins > 0
    single = claims.sum(dim=1) == 1
    return torch.where(single, claims.float().argmax(dim=1), margins.argmax(dim=1))


def top_k(module_logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(B, M, 2) -> (B, min(k, M)): the modules with the highest own-class probabilities, best first."""
    margins = module_margins(module_logits)
    return margins.topk(min(k, margins.shape[1]), dim=1).indices


def calibrated_margins(module_logits: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """(B, M, 2) module logits and (M, 2) `[scale, bias]` -> (B, M) log-odds of each calibrated own-class
    probability."""
    margin = module_margins(module_logits)
    scale, bias = calibration.to(margin).T
    return scale * margin + bias


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
