"""Recovery of a pruned module: refit each pruned block's output conv by least squares to reproduce the parent's
block output, then train the pruned part so that the module's own-class probability follows the parent's
probability of its class on unlabeled training images (each image seen also mirrored)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from torch import nn

from ....data import fixed_input_size, iterate_batches
from ....distributed import to_model
from ....models import ModularResNetConfig, ModularResNetForImageClassification, image_mode, image_processor_for
from .importance import log_odds
from .pruning import ChannelSelection


@torch.no_grad()
def reconstruct(
    parent: ModularResNetForImageClassification,
    module: ModularResNetForImageClassification,
    selection: ChannelSelection,
    start: int,
    features: torch.Tensor,
    max_rows: int = 65_536,
) -> None:
    """Refit, block by block, the conv that writes each pruned block's output (ThiNet-style least squares), so that
    the block's pre-activation sum matches the parent's on `features` (the prefix output) as well as the kept
    channels allow. The block's batch norm is folded into the fit. Each block sees the pruned blocks before it."""
    parent_steps, module_steps = parent.steps(), module.steps()
    stages = [0] + [parent.stage_layers.index(name.split(".")[0]) + 1 for name, _ in parent.blocks()]  # per step
    full, kept = features, features
    for position in range(start, len(parent_steps)):
        parent_step, module_step = parent_steps[position], module_steps[position]
        if position > 0:  # the stem has nothing to refit
            target = _pre_activation(parent_step, full)
            last_conv, last_norm = module_step.last_conv, module_step.last_norm
            inputs = _conv_input(module_step, last_conv, kept)
            shortcut = kept if module_step.downsample is None else module_step.downsample(kept)
            stream = selection.residual[stages[position]]
            _fit_conv(last_conv, last_norm, inputs, target[:, stream] - shortcut, max_rows, seed=position)
        full, kept = parent_step(full), module_step(kept)


def _pre_activation(block: nn.Module, hidden_state: torch.Tensor) -> torch.Tensor:
    """The block's residual sum, before its last ReLU."""
    last_act = getattr(block, block.last_act_name)
    captured = []
    handle = last_act.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].clone()))
    try:
        block(hidden_state)
    finally:
        handle.remove()
    return captured[0]


def _conv_input(block: nn.Module, conv: nn.Conv2d, hidden_state: torch.Tensor) -> torch.Tensor:
    captured = []
    handle = conv.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    try:
        block(hidden_state)
    finally:
        handle.remove()
    return captured[0]


def _fit_conv(
    conv: nn.Conv2d, norm: nn.BatchNorm2d, inputs: torch.Tensor, target: torch.Tensor, max_rows: int, seed: int
) -> None:
    """Least squares (slightly ridge-regularised) for conv weights and a bias that map `inputs` to `target`; the
    batch norm becomes the identity plus that bias."""
    columns = F.unfold(inputs, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (N, k*k*C, L)
    rows = columns.transpose(1, 2).reshape(-1, columns.shape[1])
    wanted = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1])
    if len(rows) > max_rows:
        sample = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_rows]
        rows, wanted = rows[sample], wanted[sample]
    design = torch.cat([rows.double(), torch.ones(len(rows), 1, dtype=torch.float64, device=rows.device)], dim=1)
    gram = design.T @ design
    gram += 1e-3 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram, design.T @ wanted.double())  # in float64 whatever the module's dtype
    conv.weight.copy_(solution[:-1].T.reshape(conv.weight.shape))
    norm.running_mean.zero_()
    norm.running_var.fill_(1 - norm.eps)
    norm.weight.fill_(1)
    norm.bias.copy_(solution[-1])


def rebuild(config_dict: dict[str, Any], state: dict[str, torch.Tensor]) -> ModularResNetForImageClassification:
    config = ModularResNetConfig.from_dict({**config_dict, "id2label": {0: "own", 1: "rest"}})  # named by the caller
    with torch.device("meta"):
        module = ModularResNetForImageClassification(config)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


@torch.no_grad()  # not inference_mode: the features feed training
def distillation_data(
    parent: ModularResNetForImageClassification,
    dataset: datasets.Dataset,
    image_column: str,
    start: int,
    *,
    count: int,
    mirror: bool,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unlabeled training images through the parent's frozen prefix (the first `start` steps), and the parent's
    log-odds of every class on them: (N, C, H, W) features and (N, n) targets."""
    count = min(count, len(dataset))
    rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    batches = iterate_batches(
        dataset.select(rows.tolist()),
        image_processor_for(parent.config),
        image_column=image_column,
        label_column=None,  # unlabelled: the parent's answers are the targets
        image_mode=image_mode(parent.config.num_channels),
        rows=rows.tolist(),
        image_size=fixed_input_size(parent.config),
    )
    prefix = nn.Sequential(*parent.steps()[:start])
    features, teacher = [], []
    for pixel_values, _ in batches:
        pixel_values = to_model(pixel_values, parent)
        if mirror:  # each image and its mirror image: twice the data for the cost of preparing it
            pixel_values = torch.cat([pixel_values, pixel_values.flip(-1)])
        features.append(prefix(pixel_values))
        teacher.append(log_odds(parent(pixel_values).logits))
    return torch.cat(features), torch.cat(teacher)


def distill(
    module: ModularResNetForImageClassification,
    start: int,
    features: torch.Tensor,
    target_log_odds: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> float:
    """Train the module's steps from `start` on, and its head, so its own-class probability follows the parent's.

    A half-precision module trains in float32 and gets the result in its own dtype: in float16, Adam's epsilon
    (1e-8) rounds to 0 and a zero gradient makes NaN weights, and in either half type small updates round away."""
    with _at_least_float32(module) as precision:
        tail = module.steps()[start:]
        parameters = [p for step in tail for p in step.parameters()] + list(module.fc.parameters())
        optimizer = torch.optim.Adam(parameters, lr=learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        generator = torch.Generator().manual_seed(seed)
        targets = torch.sigmoid(target_log_odds.to(precision))
        # Batch norm stays in eval mode: its statistics are the parent's (or folded into a refitted conv), and batch
        # statistics of a few hundred unlabeled images would only move them; its scale and shift still train.
        # Channels-last convolutions train about 20% faster on CPU (measured on the shared ResNet-20); the module goes
        # back to the standard layout afterwards, which is what safetensors stores.
        module.to(memory_format=torch.channels_last)
        last_losses = []  # the reported loss: the mean over the last tenth of the steps (one batch is noisy)
        for step_index in range(steps):
            batch = torch.randint(0, len(features), (batch_size,), generator=generator)
            hidden_state = features[batch].to(precision).contiguous(memory_format=torch.channels_last)
            for step in tail:
                hidden_state = step(hidden_state)
            logits = module.forward_head(hidden_state)  # the head as the module answers (softmax or channeled)
            loss = F.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step_index >= steps - max(1, steps // 10):
                last_losses.append(loss.item())
        module.to(memory_format=torch.contiguous_format)
        module.eval()
        return sum(last_losses) / len(last_losses)


@contextmanager
def _at_least_float32(module: nn.Module) -> Iterator[torch.dtype]:
    """`module` in float32 (or float64) inside the block, back in its own dtype after it; yields the dtype used."""
    dtype = next(module.parameters()).dtype
    precision = torch.promote_types(dtype, torch.float32)
    module.to(precision)
    try:
        yield precision
    finally:
        module.to(dtype)
