"""Run a composition's modules without repeating the work they share.

Modules decomposed from one parent keep the parent's weights: they differ in their heads and in masks on some ReLU
sites (and, for compact modules, in the blocks they prune). Running each module alone repeats the parent's trunk N
times. An `ExecutionPlan` instead arranges the modules as a tree of steps (the stem, then each block, then the
head): modules whose step has the same weights and shapes share one node, so a shared trunk runs once per batch and
only the parts where modules differ run per module.

A masked ReLU changes its output only where the unmasked value is positive. Nodes therefore run the shared,
unmasked step and record, per image and module, whether any position the module masks fired. An (image, module)
pair that never fired is exactly what the module alone computes; the few pairs that did are run again through
their module alone. The result equals running every module on its own (up to float rounding in the stacked heads).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MaskedReLU, ModularResNetForImageClassification
from ..models.modeling_modular_resnet import head_logits


class _ProbedReLU(nn.Module):
    """The unmasked ReLU of a shared step that notes, per image, which of the node's modules would have masked a
    position that fired. `masked` is (K, S): for the K positions any of the S modules masks, which modules do."""

    def __init__(self, columns: torch.Tensor, masked: torch.Tensor):
        super().__init__()
        self.columns, self.masked = columns, masked
        self.fired: torch.Tensor | None = None  # (B, S) after a forward

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        hidden_state = F.relu(hidden_state, inplace=True)
        positive = hidden_state.flatten(1)[:, self.columns] != 0  # != 0 so a NaN counts as fired, as it would
        self.fired = (positive.to(self.masked.dtype) @ self.masked) > 0
        return hidden_state


@dataclass(frozen=True)
class Head:
    """What a member answers from its pooled features: (R, F) rows, (R,) bias, and how the rows become logits
    (`head_type`, as in the member's config). By default the member's own `fc`; a fitted composition swaps in its
    own heads without touching the members."""

    weight: torch.Tensor
    bias: torch.Tensor
    head_type: str

    @classmethod
    def of(cls, module: ModularResNetForImageClassification) -> Head:
        return cls(module.fc.weight, module.fc.bias, module.config.head_type)

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        return head_logits(F.linear(pooled, self.weight, self.bias), self.head_type)


def run_alone(module: ModularResNetForImageClassification, head: Head, pixel_values: torch.Tensor) -> torch.Tensor:
    """One member's logits (B, 2) with `head`, the member run on its own."""
    return head(module.forward_head(module.forward_features(pixel_values), pre_logits=True))


def _relu_masks(step: nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: module.mask for name, module in step.named_modules() if isinstance(module, MaskedReLU)}


def _same_step(first: nn.Module, second: nn.Module) -> bool:
    """Same structure and the same tensors, ReLU masks aside (a conv-site mask must match: it always fires)."""
    if first is second:
        return True
    relu_masks = {f"{name}.mask" for name in _relu_masks(first)}
    tensors = [
        {name: t for name, t in (*step.named_parameters(), *step.named_buffers()) if name not in relu_masks}
        for step in (first, second)
    ]
    structure = [[(type(m), getattr(m, "index", None)) for m in step.modules()] for step in (first, second)]
    if structure[0] != structure[1] or tensors[0].keys() != tensors[1].keys():  # index: a pruned shortcut's mapping
        return False
    return all(
        a.shape == b.shape
        and (a.device, a.dtype) == (b.device, b.dtype)
        and (a.data_ptr() == b.data_ptr() or torch.equal(a, b))
        for a, b in zip(tensors[0].values(), tensors[1].values(), strict=True)
    )


def _probed_copy(step: nn.Module, members: Sequence[nn.Module]) -> tuple[nn.Module, list[_ProbedReLU]]:
    """`step` with its tensors shared, its ReLU masks lifted and a probe on every ReLU that some member masks."""
    shared = {id(tensor): tensor for tensor in (*step.parameters(), *step.buffers())}
    carrier = copy.deepcopy(step, shared).eval()
    member_masks = [_relu_masks(member) for member in members]
    probes = []
    for name, relu in list(carrier.named_modules()):
        if not isinstance(relu, MaskedReLU):
            continue
        masks = [masks[name] for masks in member_masks]
        relu.mask = None
        if all(mask is None for mask in masks):
            continue
        shape_of = next(mask for mask in masks if mask is not None)  # members without a mask here mask nothing
        masked = torch.stack([torch.zeros_like(shape_of) if m is None else ~m for m in masks]).flatten(1).T  # (CHW, S)
        columns = masked.any(dim=1).nonzero().flatten()
        if len(columns) == 0:
            continue
        probe = _ProbedReLU(columns, masked[columns].float())
        parent_name, _, attribute = name.rpartition(".")
        setattr(carrier.get_submodule(parent_name) if parent_name else carrier, attribute, probe)
        probes.append(probe)
    return carrier, probes


@dataclass
class _Node:
    """One shared step; `members` are the module indices that run through it."""

    step: nn.Module
    probes: list[_ProbedReLU]
    members: list[int]
    children: list[_Node] = field(default_factory=list)
    head_weight: torch.Tensor | None = None  # leaves: (R, F) the members' head rows, stacked
    head_bias: torch.Tensor | None = None
    head_rows: list[int] = field(default_factory=list)  # leaves: how many of those rows each member has


class ExecutionPlan:
    """The step tree of a list of modules. `plan(inputs)` -> (B, M, L) logits, as running each module alone gives.

    `inputs[i]` is module i's prepared input; modules with the same `input_keys` entry must get the same tensor.
    `heads[i]` is what module i answers with (default: its own head).
    """

    def __init__(
        self,
        modules: Sequence[ModularResNetForImageClassification],
        input_keys: Sequence[Hashable],
        heads: Sequence[Head] | None = None,
    ):
        self.modules = list(modules)
        self.heads = list(heads) if heads is not None else [Head.of(module) for module in self.modules]
        module_steps = [module.steps() for module in self.modules]
        self.roots: list[_Node] = []
        self.rerun_fraction = 0.0  # of the last batch's (image, module) pairs, the share a mask made run alone
        for key in dict.fromkeys(input_keys):
            group = [i for i, k in enumerate(input_keys) if k == key]
            self.roots.extend(self._build(group, module_steps, depth=0))

    def _build(self, group: list[int], module_steps: list[list[nn.Module]], depth: int) -> list[_Node]:
        """Partition `group` by its step at `depth` and build a node (and its subtree) per part."""
        parts: list[list[int]] = []
        for index in group:
            for part in parts:
                first = module_steps[part[0]]
                if len(first) > depth and _same_step(first[depth], module_steps[index][depth]):
                    part.append(index)
                    break
            else:
                parts.append([index])
        nodes = []
        for part in parts:
            carrier, probes = _probed_copy(module_steps[part[0]][depth], [module_steps[i][depth] for i in part])
            node = _Node(carrier, probes, part)
            if depth + 1 < len(module_steps[part[0]]):
                node.children = self._build(part, module_steps, depth + 1)
            else:
                heads = [self.heads[i] for i in part]
                node.head_weight = torch.cat([head.weight for head in heads])
                node.head_bias = torch.cat([head.bias for head in heads])
                node.head_rows = [len(head.weight) for head in heads]
            nodes.append(node)
        return nodes

    @property
    def shared_steps(self) -> int:
        """How many step computations one batch saves against running every module alone."""
        total_module_steps = sum(len(module.steps()) for module in self.modules)
        return total_module_steps - sum(_count(root) for root in self.roots)

    def __call__(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        batch = inputs[0].shape[0]
        num_labels = self.modules[0].config.num_labels
        # Members may live on different devices and dtypes: their logits meet on the first one's device, in the
        # members' common dtype (float64 members answer in float64, a bfloat16 and a float32 one in float32).
        logits = torch.empty(batch, len(self.modules), num_labels, device=inputs[0].device, dtype=common_dtype(inputs))
        fired = torch.zeros(batch, len(self.modules), dtype=torch.bool, device=inputs[0].device)
        for root in self.roots:
            self._run(root, inputs[root.members[0]], logits, fired)
        self.rerun_fraction = fired.float().mean().item()
        for index in fired.any(dim=0).nonzero().flatten().tolist():  # the rare pairs a mask changed: run them alone
            rows = fired[:, index].nonzero().flatten()
            rerun = run_alone(self.modules[index], self.heads[index], inputs[index][rows.to(inputs[index].device)])
            logits[rows, index] = rerun.to(logits)
        return logits

    def _run(self, node: _Node, hidden_state: torch.Tensor, logits: torch.Tensor, fired: torch.Tensor) -> None:
        # Walk single-child chains in a loop, not by recursion, so each step's input is freed as soon as it is used:
        # a shared trunk holds no more activations at a time than one module does.
        while True:
            hidden_state = node.step(hidden_state)
            for probe in node.probes:
                fired[:, node.members] |= probe.fired.to(fired.device)
                probe.fired = None
            if len(node.children) != 1:
                break
            node = node.children[0]
        if not node.children:  # the members' heads as one matrix product, then each one's own reduction
            pooled = self.modules[node.members[0]].global_pool(hidden_state)
            rows = F.linear(pooled, node.head_weight, node.head_bias).split(node.head_rows, dim=1)
            for index, member_rows in zip(node.members, rows, strict=True):
                logits[:, index] = head_logits(member_rows, self.heads[index].head_type).to(logits)
            return
        for child in node.children:
            self._run(child, hidden_state, logits, fired)


def common_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype all of `tensors` promote to."""
    return functools.reduce(torch.promote_types, (tensor.dtype for tensor in tensors))


def _count(node: _Node) -> int:
    return 1 + sum(_count(child) for child in node.children)


def plan_key(modules: Sequence[nn.Module]) -> tuple:
    """Changes whenever a module or any of its tensors is replaced or modified in place (a cached plan is stale).
    (Inference tensors keep no version counter; they can only be changed inside `torch.inference_mode`.)"""
    return tuple((id(module), *tensor_versions(module)) for module in modules)


def tensor_versions(module: nn.Module) -> tuple:
    """Each of `module`'s tensors and its version counter: changes when a tensor is replaced or modified in place."""
    return tuple((id(t), -1 if t.is_inference() else t._version) for t in (*module.parameters(), *module.buffers()))


def cached(factory: Callable[[], ExecutionPlan], key: tuple, cache: dict) -> ExecutionPlan:
    """The plan for `key` from a one-entry cache, built by `factory` when the key changed."""
    if cache.get("key") != key:
        cache.clear()
        cache.update(key=key, plan=factory())
    return cache["plan"]
