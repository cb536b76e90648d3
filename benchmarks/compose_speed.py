"""Composition speed and memory: the parent, its ten modules run one after another (`shared=False`), and the same
ten modules run as one shared computation (`ComposedModel`'s default, `hf_modular.compose.execution`), in one run.

    python benchmarks/compose_speed.py [--models resnet20 resnet56] [--batch-sizes 8 128] [--repeats 5]

Modules come from the shared pretrained CIFAR ResNets (../shared), decomposed with the paper's 1000 samples per
class; the inputs are real test images, since how often a mask fires (and a module must run alone) depends on the
data. Times interleave the variants; read the ratios. Memory is the peak resident memory one forward pass adds
(Linux only: /proc/self/clear_refs), each variant measured in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hf_modular  # noqa: F401
from hf_modular import ComposedModel
from hf_modular.data import load_image_dataset
from hf_modular.decompose import decompose
from hf_modular.models import image_processor_for, import_cifar_resnet

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
VARIANTS = ("parent", "loop", "shared")


def test_images(batch_size: int) -> torch.Tensor:
    """The first `batch_size` test images in [0, 1] (the composed model's input)."""
    test = load_image_dataset(SHARED / "data" / "cifar10-jpeg" / "test.parquet", split="test").select(range(batch_size))
    images = torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in test["img"]]))
    return images.permute(0, 3, 1, 2).float() / 255


def runner(variant: str, parent, composed: ComposedModel):
    """The callable a variant times, on [0, 1] images."""
    if variant == "parent":
        processor = image_processor_for(parent.config)
        mean = torch.tensor(processor.image_mean)[:, None, None]
        std = torch.tensor(processor.image_std)[:, None, None]
        return lambda images: parent((images - mean) / std).logits
    return lambda images: composed.module_logits(images, shared=variant == "shared")


def peak_memory_mb(directory: Path, variant: str, batch_size: int) -> float:
    """Peak resident memory (MiB) one forward pass adds, measured in a fresh process."""
    command = [sys.executable, __file__, "--probe", str(directory), variant, str(batch_size)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["mb"]


@torch.inference_mode()
def probe(directory: str, variant: str, batch_size: int) -> None:
    """In a fresh process: load, warm up on one image, then report how far one forward pass raises peak memory."""
    composed = ComposedModel.from_pretrained(directory)
    parent = hf_modular.ModularResNetForImageClassification.from_pretrained(Path(directory) / "parent")
    run = runner(variant, parent, composed)
    images = test_images(batch_size)
    run(images[:1])
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident size to the current one
    before = memory_kb("VmRSS")
    run(images)
    print(json.dumps({"mb": (memory_kb("VmHWM") - before) / 1024}))


def memory_kb(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak since the last reset)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe(args.probe[0], args.probe[1], int(args.probe[2]))
    if not SHARED.is_dir():
        raise SystemExit(f"This benchmark needs the shared checkpoints and data at {SHARED}.")
    train = load_image_dataset(SHARED / "data" / "cifar10-jpeg" / "train.parquet", split="train")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    print(
        "| model | batch | parent img/s | loop img/s | shared img/s | shared / loop | pairs run alone "
        "| peak MiB parent / loop / shared |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        parent = import_cifar_resnet(SHARED / "models" / "akamaster-cifar-resnet" / CHECKPOINTS[name])
        modules = decompose(parent, train, samples_per_class=args.samples_per_class, progress=False)
        composed = ComposedModel.from_modules(list(modules.values())).eval()
        with tempfile.TemporaryDirectory() as directory:
            composed.save_pretrained(directory, materialize=True)
            parent.save_pretrained(Path(directory) / "parent")
            for batch_size in args.batch_sizes:
                images = test_images(batch_size)
                loop, shared = composed.module_logits(images, shared=False), composed.module_logits(images)
                assert torch.equal(loop.argmax(-1), shared.argmax(-1)), "shared and loop predictions differ"
                rerun = composed.execution_plan.rerun_fraction  # of the shared call just above
                runs = {variant: runner(variant, parent, composed) for variant in VARIANTS}
                timings: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
                for _ in range(args.repeats):
                    for variant in VARIANTS:
                        timings[variant].append(seconds(runs[variant], images))
                speed = {key: batch_size / statistics.median(values) for key, values in timings.items()}
                memory = " / ".join(f"{peak_memory_mb(Path(directory), v, batch_size):.0f}" for v in VARIANTS)
                print(
                    f"| {name} | {batch_size} | {speed['parent']:.0f} | {speed['loop']:.0f} | {speed['shared']:.0f} "
                    f"| {speed['shared'] / speed['loop']:.2f} | {rerun:.1%} | {memory} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
