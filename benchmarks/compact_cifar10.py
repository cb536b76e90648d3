"""Compact modules against the paper's, on the shared pretrained CIFAR-10 ResNets, in one run.

    python benchmarks/compact_cifar10.py [--models resnet20 resnet56] [--eval-limit N] [--variants ...]

For the paper's `activation` strategy and `channel` at several budgets it prints: each module's parameters and
multiply-accumulates (MACs) relative to the parent (mean over the ten modules), the ten-module composition's top-1
and top-5 against the parent's on the test split, the composition's MACs per image (a prefix the modules share
counted once, modules that must run alone counted when they do) and its measured images/s against the parent's,
and the decomposition's wall time. Published figures of other methods follow, labelled as such.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import hf_modular  # noqa: F401
from hf_modular import ComposedModel
from hf_modular.compose import composed_image_processor
from hf_modular.data import iterate_batches, load_image_dataset
from hf_modular.decompose import decompose
from hf_modular.evaluation import evaluate
from hf_modular.models import import_cifar_resnet
from hf_modular.module import MacCounter, count_macs, count_parameters

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
# name -> decompose() options. Samples per class: the paper's 1000 for activation; 256 for the Taylor scores.
VARIANTS = {
    "activation": dict(strategy="activation", samples_per_class=1000),
    "channel, last block at 25%": dict(strategy="channel", prune_from="last block", keep=0.25, samples_per_class=256),
    "channel, last block at 50%": dict(strategy="channel", prune_from="last block", keep=0.5, samples_per_class=256),
    "channel, stage 3 at 25%": dict(strategy="channel", prune_from="layer3", keep=0.25, samples_per_class=256),
    "channel, stage 3 at 50%": dict(strategy="channel", prune_from="layer3", keep=0.5, samples_per_class=256),
    "channel, stages 2-3 at 25%": dict(strategy="channel", prune_from="layer2", keep=0.25, samples_per_class=256),
    # Standalone modules at under a quarter of the parent's MACs; twice the default recovery (still < 15 min on R20).
    "channel, all at 25%, streams 75%": dict(
        strategy="channel", prune_from="stem", keep=0.25, keep_residual=0.75, samples_per_class=256, distill_steps=600
    ),
}
PUBLISHED = [
    ("Pan & Rajan, ICSE 2022 (paper's ResNets, no batch norm)", "100% (masked copy)", "-1.77 pp top-1"),
    ("MwT, ICSE 2024 (retrains the parent)", "14.58% of kernels", "-1.13 pp"),
    ("CNNSplitter, ASE 2022 (search + retraining)", "~52% of the model's compute", "~-2.9 pp"),
    ("GradSplitter (retraining)", "~20% fewer kernels than CNNSplitter", "~-2.5 pp"),
]


@torch.inference_mode()
def images_per_second(functions: dict, inputs: dict, repeats: int = 5) -> dict:
    """Median images/s of each function on its input, the functions timed in turn (interleaved), so a machine that
    gets busier or quieter during the measurement affects them alike."""
    times: dict = {name: [] for name in functions}
    for name, function in functions.items():
        function(inputs[name])  # warm-up
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function(inputs[name])
            times[name].append(time.perf_counter() - start)
    return {name: len(inputs[name]) / statistics.median(values) for name, values in times.items()}


def measure(name: str, parent, train, test, options: dict, batch: torch.Tensor, normalised: torch.Tensor) -> dict:
    """Decompose with `options`, then size, accuracy and cost of the modules and of their composition."""
    if options.get("prune_from") == "last block":
        options = {**options, "prune_from": f"{parent.stage_names[-1]}.{parent.config.layers[-1] - 1}"}
    started = time.perf_counter()
    modules = decompose(parent, train, progress=False, **options)
    seconds = time.perf_counter() - started
    example = torch.zeros(1, 3, 32, 32)
    parent_macs, parent_parameters = count_macs(parent, example), count_parameters(parent)
    composed = ComposedModel.from_modules(list(modules.values())).eval()
    accuracy = evaluate(composed, test, progress=False)
    with MacCounter() as counter, torch.inference_mode():
        composed.module_logits(batch)
    mean = statistics.mean
    return {
        "name": name,
        "parameters": mean(count_parameters(m) for m in modules.values()) / parent_parameters,
        "macs": mean(count_macs(m, example) for m in modules.values()) / parent_macs,
        "top1": accuracy.top1,
        "top5": accuracy.top5,
        "composition_macs": counter.total / len(batch) / parent_macs,
        **images_per_second(
            {"speed": composed.module_logits, "parent_speed": parent.forward},
            {"speed": batch, "parent_speed": normalised},
        ),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], choices=list(CHECKPOINTS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--eval-limit", type=int, default=None, help="test on the first N images (default: all)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"This benchmark needs the shared checkpoints and data at {SHARED}.")
    train = load_image_dataset(SHARED / "data" / "cifar10-jpeg" / "train.parquet", split="train")
    test = load_image_dataset(SHARED / "data" / "cifar10-jpeg" / "test.parquet", split="test")
    if args.eval_limit:
        test = test.select(range(args.eval_limit))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(test)} test images")
    for model_name in args.models:
        parent = import_cifar_resnet(SHARED / "models" / "akamaster-cifar-resnet" / CHECKPOINTS[model_name]).eval()
        parent_accuracy = evaluate(parent, test, progress=False)
        composed_processor = composed_image_processor(ComposedModel.config_class(image_size=32))
        batch, _ = next(
            iterate_batches(test, composed_processor, image_column="img", label_column="label", batch_size=128)
        )
        mean, std = torch.tensor(parent.config.image_mean), torch.tensor(parent.config.image_std)
        normalised = (batch - mean[:, None, None]) / std[:, None, None]
        print(
            f"\n### {model_name}: parent top-1 {100 * parent_accuracy.top1:.2f}%, top-5 "
            f"{100 * parent_accuracy.top5:.2f}%; img/s on batches of 128, the parent timed beside each composition\n"
        )
        print(
            "| variant | module params | module MACs | composed top-1 (vs parent) | composed top-5 (vs parent) "
            "| 10-module MACs | 10-module img/s vs parent's | decomposition |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in args.variants:
            row = measure(name, parent, train, test, VARIANTS[name], batch, normalised)
            print(
                f"| {name} | {100 * row['parameters']:.1f}% | {100 * row['macs']:.1f}% "
                f"| {100 * row['top1']:.2f}% ({100 * (row['top1'] - parent_accuracy.top1):+.2f} pp) "
                f"| {100 * row['top5']:.2f}% ({100 * (row['top5'] - parent_accuracy.top5):+.2f} pp) "
                f"| {row['composition_macs']:.2f}x | {row['speed']:.0f} vs {row['parent_speed']:.0f} "
                f"({row['speed'] / row['parent_speed']:.2f}x) "
                f"| {row['seconds'] / 60:.1f} min |",
                flush=True,
            )
    print("\nPublished figures (other papers' own models and setups; not measured here):\n")
    print("| method | module size | composed accuracy vs parent |")
    print("|---|---|---|")
    for row in PUBLISHED:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
