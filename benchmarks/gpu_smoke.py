"""One pass through every entry point on a GPU (or on the CPU with `--device cpu`), on the shared CIFAR-10.

    python benchmarks/gpu_smoke.py [--device cuda] [--dtype float32|bfloat16|float16] [--quick] [--shared DIR]

import the shared ResNet-20 -> decompose it with both strategies -> compose the modules -> fit the composition's
heads -> evaluate parent and composition -> train a fresh ResNet-20 for one epoch. Prints one row per step: its wall
time and what it measured, the composed accuracy beside the parent's. A step that leaves a tensor on the wrong
device or in the wrong dtype fails here with the library's own error.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import datasets
import torch
import transformers

import hf_modular
from hf_modular import ComposedModel, ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.data import load_image_dataset
from hf_modular.distributed import distributed_state, training_accelerator
from hf_modular.evaluation import evaluate, evaluate_composition
from hf_modular.models import CIFAR10_LABELS, import_cifar_resnet
from hf_modular.train import train

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu, ...")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the parent's dtype")
    parser.add_argument("--samples-per-class", type=int, default=500, help="decomposition samples per class")
    parser.add_argument("--test-images", type=int, default=10_000, help="evaluation images")
    parser.add_argument("--train-images", type=int, default=50_000, help="images of the training epoch")
    parser.add_argument("--quick", action="store_true", help="a few hundred images per step (checks the code path)")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder (data/, models/)")
    args = parser.parse_args()
    if not args.shared.is_dir():
        raise SystemExit(f"This benchmark needs the shared data at {args.shared} (see --shared).")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here; run with --device cpu to check the code path on the CPU.")
    if args.quick:
        args.samples_per_class, args.test_images, args.train_images = 20, 300, 500
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    # One process: the state's device is the one asked for (`accelerate launch` would give each process its own).
    on_cpu = device.type == "cpu"
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # Accelerate's state uses the current device
    state = distributed_state(cpu=on_cpu)
    data = args.shared / "data" / "cifar10-jpeg"
    train_data = load_image_dataset(data / "train.parquet", split="train")
    test_data = load_image_dataset(data / "test.parquet", split="test")
    test_data = test_data.select(range(min(args.test_images, len(test_data))))
    rows: list[tuple[str, float, str]] = []

    def step(name: str, work):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        result, summary = work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows.append((name, time.perf_counter() - started, summary))
        print(f"{name:<28} {rows[-1][1]:8.1f} s  {summary}", flush=True)
        return result

    checkpoint = args.shared / "models" / "akamaster-cifar-resnet" / "resnet20-12fca82f.th"
    parent = step("import", lambda: (import_cifar_resnet(checkpoint).to(device=device, dtype=dtype), f"{dtype}"))
    parent_accuracy = step("evaluate parent", lambda: _top1(evaluate(parent, test_data, state=state, progress=False)))
    modules = {}
    recovery = {"distill_steps": 50, "distill_images": 500} if args.quick else {}
    for strategy, options in (("activation", {}), ("channel", recovery)):
        modules[strategy] = step(
            f"decompose ({strategy})",
            lambda strategy=strategy, options=options: _built(
                hf_modular.decompose(
                    parent,
                    train_data,
                    samples_per_class=args.samples_per_class,
                    strategy=strategy,
                    accelerator=state,
                    progress=False,
                    **options,
                )
            ),
        )
        step(
            f"evaluate modules ({strategy})",
            lambda strategy=strategy: _composition(
                evaluate_composition(parent, modules[strategy], test_data, state=state, progress=False)
            ),
        )
    composed = step(
        "compose (channel modules)", lambda: (ComposedModel.from_modules(modules["channel"].values()), "10 members")
    )
    step("fit (10 images per class)", lambda: (composed.fit(train_data, images_per_class=10, progress=False), "done"))
    step("evaluate fitted composition", lambda: _top1(evaluate(composed, test_data, state=state, progress=False)))
    fresh = ModularResNetForImageClassification(
        ModularResNetConfig.from_preset("modular_resnet20", id2label=dict(enumerate(CIFAR10_LABELS)))
    ).to(dtype=dtype)
    subset = train_data.select(range(min(args.train_images, len(train_data))))
    accelerator = training_accelerator(cpu=on_cpu)
    step(
        "train one epoch",
        lambda: _trained(
            train(fresh, subset, eval_dataset=test_data, epochs=1, accelerator=accelerator, progress=False)
        ),
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{where}, parent in {args.dtype}; parent top-1 on {len(test_data)} test images: {parent_accuracy}\n")
    print("| step | seconds | result |\n|---|---|---|")
    for name, seconds, summary in rows:
        print(f"| {name} | {seconds:.1f} | {summary} |")


def _top1(accuracy) -> tuple[str, str]:
    return f"{100 * accuracy.top1:.2f}%", f"top-1 {100 * accuracy.top1:.2f}% on {accuracy.count} images"


def _built(modules: dict) -> tuple[dict, str]:
    first = next(iter(modules.values()))
    where = next(first.parameters())
    return modules, f"{len(modules)} modules on {where.device}, {where.dtype}"


def _composition(result) -> tuple[None, str]:
    return None, f"composed top-1 {100 * result.composed.top1:.2f}% vs parent {100 * result.parent.top1:.2f}%"


def _trained(history) -> tuple[None, str]:
    final = history.final
    return None, f"loss {final['loss']:.3f}, top-1 {100 * final['top1']:.2f}%"


if __name__ == "__main__":
    main()
