"""Shared fixtures: the read-only ../shared folder, small configs, weight randomisation, and an independent
re-implementation of akamaster's CIFAR ResNet that writes checkpoints in that repository's layout."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT / ".." / "shared"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` (minutes each) run in CI (`CI=true`) or with `HF_MODULAR_SLOW=1`; a local run stays short."""
    if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("HF_MODULAR_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or here with HF_MODULAR_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder beside the repository; tests that need it skip where it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR.resolve()


@pytest.fixture(scope="session")
def cifar10_test_split(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """All 10,000 CIFAR-10 test images from ../shared, cached in a temporary folder (not ~/.cache)."""
    from hf_modular.data import load_image_dataset

    parquet = shared_dir / "data" / "cifar10-jpeg" / "test.parquet"
    if not parquet.is_file():
        pytest.skip(f"{parquet} not found")
    return load_image_dataset(parquet, split="test", cache_dir=str(tmp_path_factory.mktemp("datasets-cache")))


@pytest.fixture
def tiny_config():
    """A two-stage option-A CIFAR-stem ResNet with 4/8 channels and three named labels: fast to build and run."""
    from hf_modular import ModularResNetConfig

    return ModularResNetConfig(
        layers=[1, 1],
        widths=[4, 8],
        stem_width=4,
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "bird"},
    )


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every tensor a value that a fresh initialisation would not: batch-norm affine parameters and running
    statistics, step counters, linear biases and masks (random 0/1). Conv and linear weights keep their random
    initialisation, which a second initialisation would draw differently.

    Without this, converted or reloaded models agree trivially (timm zero-initialises the last batch norm of each
    block, and fresh batch norms are the identity in eval mode)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(uniform(n, 0.3, 0.9))
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(uniform(n, 0.5, 1.5))
                module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=generator)))
            elif isinstance(module, nn.Linear):
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            mask = getattr(module, "mask", None)
            if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
                mask.copy_(torch.rand(mask.shape, generator=generator) < 0.7)
    return model


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    return randomize_


# --- An independent implementation of akamaster/pytorch_resnet_cifar10's resnet.py (option A) -------------------


class AkamasterBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.option_a = stride != 1 or in_planes != planes
        self.planes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option_a:  # akamaster's LambdaLayer: subsample by 2, pad planes // 4 zero channels on each side
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4), "constant", 0)
        else:
            shortcut = x
        return F.relu(out + shortcut)


class AkamasterResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for index, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            blocks = []
            for block_stride in [stride] + [1] * (blocks_per_stage - 1):
                blocks.append(AkamasterBlock(in_planes, planes, block_stride))
                in_planes = planes
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


@pytest.fixture
def akamaster_checkpoint(tmp_path: Path) -> Callable[..., tuple[Path, AkamasterResNet]]:
    """Factory: write a checkpoint in akamaster's layout and return (path, reference model in eval mode).

    The layout is the published one: `{"best_prec1": float, "state_dict": ...}`, keys prefixed `module.`
    (DataParallel), head `linear`, no parameters for the option-A shortcut, no `num_batches_tracked` keys."""

    def make(
        blocks_per_stage: int = 3, num_classes: int = 10, seed: int = 0, name: str = "resnet.th"
    ) -> tuple[Path, AkamasterResNet]:
        torch.manual_seed(seed)
        reference = randomize_(AkamasterResNet(blocks_per_stage, num_classes), seed).eval()
        state_dict = {
            f"module.{key}": value.clone()
            for key, value in reference.state_dict().items()
            if not key.endswith("num_batches_tracked")
        }
        path = tmp_path / name
        torch.save({"best_prec1": 90.0, "state_dict": state_dict}, path)
        return path, reference

    return make
