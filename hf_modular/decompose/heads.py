"""A module's two-way head, made from the parent's classifier rows.

* `"softmax"`: the parent's rows, the module's class first; the module answers (own logit, log-sum-exp of the
  others), so its own-class probability is exactly the parent's softmax probability of that class, and "own" wins
  exactly when the parent's one-vs-rest decision (probability > 0.5) says so.
* `"channeled"`: the paper's head, two rows: the own row against the mean of the other rows. It ranks images like
  the parent but decides "own" whenever the own logit beats the *average* other logit, which is far too often.
"""

from __future__ import annotations

import torch

HEADS = ("softmax", "channeled")


def channel_head(weight: torch.Tensor, bias: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, F) weights and (n,) biases -> the 2-way head: (2, F) and (2,), own class first, then the others' mean."""
    others = [k for k in range(weight.shape[0]) if k != class_index]
    own_weight, own_bias = weight[class_index], bias[class_index]
    rest_weight, rest_bias = weight[others].mean(0), bias[others].mean(0)
    return torch.stack([own_weight, rest_weight]).clone(), torch.stack([own_bias, rest_bias]).clone()


def softmax_head(weight: torch.Tensor, bias: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, F) weights and (n,) biases -> the same rows with `class_index`'s first (the others in their order)."""
    order = [class_index, *(k for k in range(weight.shape[0]) if k != class_index)]
    return weight[order].clone(), bias[order].clone()


def module_head(
    weight: torch.Tensor, bias: torch.Tensor, class_index: int, head: str
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The rows, bias and `head_type` (a config field) of a module's `head` ("softmax" or "channeled")."""
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of {HEADS}.")
    if head == "softmax":
        return *softmax_head(weight, bias, class_index), "softmax"
    return *channel_head(weight, bias, class_index), "linear"


# What a module card says about each head (its limitations section).
HEAD_DESCRIPTIONS = {
    "softmax": "It is the parent's classifier with this class's row first, and the first output's probability is "
    "that classifier's softmax probability of this class on the module's features: where the module computes what "
    "its parent computes, it says what its parent would.",
    "channeled": "It is the paper's channeled head, the parent's own row for this class against the mean of the "
    "other rows: it ranks images like the parent but claims its class far too often when used alone.",
}
