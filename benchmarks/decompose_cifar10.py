"""Decompose the shared pretrained CIFAR-10 ResNets with the paper's method and measure the result, in one run.

    python benchmarks/decompose_cifar10.py [--models resnet20 resnet56] [--samples-per-class 1000] [--eval-limit N]

Needs ../shared (the JPEG CIFAR-10 copy and the akamaster checkpoints). For each model it prints parent vs composed
top-1/top-5 on the test split, each module's binary accuracy, masked fraction and Jaccard index, the decomposition's
wall time, and the statistics pass's time over a plain inference pass of the parent on the same inputs (measured
right after it, in the same process). Both MC-BLN readings are measured; identical modules are evaluated once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import median

import torch

import hf_modular  # noqa: F401
from hf_modular.data import dataset_to_model_labels, find_columns, load_image_dataset
from hf_modular.decompose import decompose
from hf_modular.decompose.sampling import plan_samples
from hf_modular.decompose.statistics import collect_activity
from hf_modular.evaluation import evaluate_composition
from hf_modular.models import import_cifar_resnet

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
CHECKPOINTS = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
}


def pass_overhead(model, train, samples_per_class: int) -> tuple[float, float]:
    """Median seconds of the statistics pass and of plain inference over the same planned rows (data loading
    included), after one warm-up pass."""
    image_column, label_column = find_columns(train)
    to_model = dataset_to_model_labels(train.features[label_column].names, model.config.id2label)
    plan = plan_samples(
        to_model[torch.tensor(train[label_column])],
        list(range(10)),
        10,
        samples_per_class=samples_per_class,
        negatives_ratio=1.0,
        seed=0,
    )

    def run(observe: bool) -> float:
        start = time.perf_counter()
        collect_activity(
            model, train, plan, image_column=image_column, label_column=label_column, observe=observe, progress=True
        )
        return time.perf_counter() - start

    run(False)  # warm-up: file cache and allocator
    plain, statistics = [], []
    for _ in range(3):  # interleaved, so that load on the machine hits both alike
        plain.append(run(False))
        statistics.append(run(True))
    return median(statistics), median(plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], choices=list(CHECKPOINTS))
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--overhead-only", action="store_true", help="only time the statistics pass vs inference")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"This benchmark needs the shared data at {SHARED}.")
    data = SHARED / "data" / "cifar10-jpeg"
    train = load_image_dataset(data / "train.parquet", split="train")
    test = load_image_dataset(data / "test.parquet", split="test")
    if args.eval_limit:
        test = test.select(range(args.eval_limit))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples_per_class} samples per class")

    for name in args.models:
        parent = import_cifar_resnet(SHARED / "models" / "akamaster-cifar-resnet" / CHECKPOINTS[name])
        statistics_seconds, inference_seconds = pass_overhead(parent, train, args.samples_per_class)
        results = {}
        for reading in () if args.overhead_only else ("text", "pseudocode"):
            start = time.perf_counter()
            modules = decompose(
                parent, train, samples_per_class=args.samples_per_class, backtrack=reading, progress=True
            )
            wall = time.perf_counter() - start
            same_as = next((r for r, (m, *_) in results.items() if all(_same(m[k], modules[k]) for k in modules)), None)
            result = results[same_as][1] if same_as else evaluate_composition(parent, modules, test, progress=True)
            results[reading] = (modules, result, wall)
            jaccard = sum(m.config.provenance.details["jaccard_index"] for m in modules.values()) / len(modules)
            masked = sum(m.config.provenance.details["masked_fraction"] for m in modules.values()) / len(modules)
            removed = sum(m.config.provenance.details["features_removed_by_backtracking"] for m in modules.values())
            print(
                f"\n## {name}, MC-BLN reading '{reading}'" + (f" (modules identical to '{same_as}')" if same_as else "")
            )
            print("| | top-1 | top-5 |\n|---|---|---|")
            print(f"| parent | {100 * result.parent.top1:.2f}% | {100 * result.parent.top5:.2f}% |")
            print(f"| composed | {100 * result.composed.top1:.2f}% | {100 * result.composed.top5:.2f}% |")
            print(
                f"| difference | {100 * (result.composed.top1 - result.parent.top1):+.2f} pp "
                f"| {100 * (result.composed.top5 - result.parent.top5):+.2f} pp |"
            )
            print(
                f"mean Jaccard {jaccard:.3f}, mean masked fraction {100 * masked:.2f}%, "
                f"features removed by MC-BLN {removed}, decomposition wall time {wall:.1f} s"
            )
            print("| module | binary accuracy | parent recall | composed recall | masked | Jaccard |")
            print("|---|---|---|---|---|---|")
            for label, module in modules.items():
                info = module.config.module
                print(
                    f"| {label} | {100 * result.module_binary_accuracy[label]:.2f}% "
                    f"| {100 * result.parent.per_class[label]:.2f}% | {100 * result.composed.per_class[label]:.2f}% "
                    f"| {100 * info['masked_fraction']:.2f}% | {info['jaccard_index']:.3f} |"
                )
        print(
            f"\n{name}: statistics pass {statistics_seconds:.1f} s vs plain inference {inference_seconds:.1f} s "
            f"on the same {10 * args.samples_per_class}-ish inputs: ratio {statistics_seconds / inference_seconds:.2f}"
        )


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


if __name__ == "__main__":
    main()
