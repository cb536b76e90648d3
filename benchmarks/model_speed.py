"""Forward speed of ModularResNet against the same network written as plain torch / timm, in one run.

    python benchmarks/model_speed.py [--batch-size 128] [--repeats 7]

The references load the very same weights, so the table also checks that outputs agree. Times interleave the two
models and report the median, because these machines are shared and noisy: read the ratio, not the absolute speed.
Target: ModularResNet within 5% of the reference (ratio >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

import hf_modular  # noqa: F401
from hf_modular import ModularResNetConfig, ModularResNetForImageClassification


class PlainBlock(nn.Module):
    """akamaster's CIFAR BasicBlock with the option-A shortcut, as written in the wild."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class PlainCifarResNet(nn.Module):
    def __init__(self, blocks: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for index, planes in enumerate((16, 32, 64)):
            stage = [
                PlainBlock(in_planes if i == 0 else planes, planes, 2 if index and i == 0 else 1) for i in range(blocks)
            ]
            layers.append(nn.Sequential(*stage))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def images_per_second(model: nn.Module, images: torch.Tensor) -> float:
    start = time.perf_counter()
    model(images)
    return len(images) / (time.perf_counter() - start)


@torch.inference_mode()
def compare(name: str, ours: nn.Module, reference: nn.Module, images: torch.Tensor, repeats: int) -> dict:
    ours.eval(), reference.eval()
    ours_logits = ours(images).logits
    difference = (ours_logits - reference(images)).abs().max().item()
    ours_speed, reference_speed = [], []
    for _ in range(repeats):  # interleaved so that load on the machine hits both alike
        ours_speed.append(images_per_second(lambda x: ours(x).logits, images))
        reference_speed.append(images_per_second(reference, images))
    ours_median, reference_median = statistics.median(ours_speed), statistics.median(reference_speed)
    return {
        "model": name,
        "reference img/s": reference_median,
        "ModularResNet img/s": ours_median,
        "ratio": ours_median / reference_median,
        "max |logit diff|": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for preset, blocks in (("modular_resnet20", 3), ("modular_resnet56", 9)):
        reference = PlainCifarResNet(blocks)
        ours = ModularResNetForImageClassification(ModularResNetConfig.from_preset(preset, num_labels=10))
        ours.load_state_dict(reference.state_dict())
        images = torch.randn(args.batch_size, 3, 32, 32)
        rows.append(compare(f"{preset} vs plain torch", ours, reference, images, args.repeats))
    reference = timm.create_model("resnet18", num_classes=10)
    ours = ModularResNetForImageClassification.from_timm(reference)
    images = torch.randn(max(args.batch_size // 8, 1), 3, 224, 224)
    rows.append(compare("modular_resnet18 vs timm resnet18", ours, reference, images, args.repeats))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} (resnet18: 1/8)")
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [
            f"{v:.1f}" if isinstance(v, float) and v > 10 else f"{v:.3g}" if isinstance(v, float) else v
            for v in row.values()
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
