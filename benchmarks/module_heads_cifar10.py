"""A module alone as a one-vs-rest classifier: the paper's channeled head against the softmax head, next to the
parent's own decision for each class, measured in one run on the shared CIFAR-10 ResNets.

    python benchmarks/module_heads_cifar10.py [--model resnet20] [--eval-limit N] [--strategies activation channel]

Needs ../shared. For each strategy and head it decomposes the parent (default options otherwise), then measures on
the test split every module's own-vs-rest accuracy, AUC and calibration error (ECE) beside the parent's (its softmax
probability of the class above 0.5), and the composed top-1 beside the parent's. Prints one markdown table per
strategy and a summary; `--output FILE.md` keeps them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hf_modular  # noqa: F401
from hf_modular.data import load_image_dataset
from hf_modular.decompose import decompose
from hf_modular.evaluation import evaluate_composition
from hf_modular.models import import_cifar_resnet

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
HEADS = ("channeled", "softmax")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", choices=list(CHECKPOINTS))
    parser.add_argument("--strategies", nargs="+", default=["activation", "channel"])
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--eval-limit", type=int, default=None, help="measure on the first N test images")
    parser.add_argument("--output", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"This benchmark needs the shared data at {SHARED}.")
    data = SHARED / "data" / "cifar10-jpeg"
    train = load_image_dataset(data / "train.parquet", split="train")
    test = load_image_dataset(data / "test.parquet", split="test")
    if args.eval_limit:
        test = test.select(range(args.eval_limit))
    parent = import_cifar_resnet(SHARED / "models" / "akamaster-cifar-resnet" / CHECKPOINTS[args.model])
    lines = [f"# Module heads, {args.model}, {len(test)} test images\n"]

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    summary = []
    for strategy in args.strategies:
        results, seconds = {}, {}
        for head in HEADS:
            started = time.perf_counter()
            modules = decompose(
                parent, train, strategy=strategy, head=head, samples_per_class=args.samples_per_class, progress=False
            )
            seconds[head] = time.perf_counter() - started
            results[head] = evaluate_composition(parent, modules, test, progress=False)
        emit(
            f"\n## strategy={strategy} (decomposition: " + ", ".join(f"{h} {s:.0f} s" for h, s in seconds.items()) + ")"
        )
        emit()
        emit(
            "| class | parent acc | channeled acc | softmax acc | parent AUC | channeled AUC | softmax AUC | "
            "parent ECE | channeled ECE | softmax ECE |"
        )
        emit("|---|---|---|---|---|---|---|---|---|---|")
        for label in results["softmax"].own_vs_rest:
            parent_q = results["softmax"].own_vs_rest[label]["parent"]
            quality = {head: results[head].own_vs_rest[label]["module"] for head in HEADS}
            emit(
                f"| {label} | {100 * parent_q['accuracy']:.2f} | "
                + " | ".join(f"{100 * quality[h]['accuracy']:.2f}" for h in HEADS)
                + f" | {parent_q['auc']:.4f} | "
                + " | ".join(f"{quality[h]['auc']:.4f}" for h in HEADS)
                + f" | {parent_q['ece']:.4f} | "
                + " | ".join(f"{quality[h]['ece']:.4f}" for h in HEADS)
                + " |"
            )
        for head in HEADS:
            rows = results[head].own_vs_rest.values()
            module_mean = sum(row["module"]["accuracy"] for row in rows) / len(rows)
            parent_mean = sum(row["parent"]["accuracy"] for row in rows) / len(rows)
            worst = max(row["parent"]["accuracy"] - row["module"]["accuracy"] for row in rows)
            summary.append(
                f"| {strategy} | {head} | {100 * module_mean:.2f} | {100 * parent_mean:.2f} | {100 * worst:+.2f} | "
                f"{100 * results[head].composed.top1:.2f} | {100 * results[head].parent.top1:.2f} |"
            )
    emit("\n## Summary\n")
    emit(
        "| strategy | head | mean module own-vs-rest acc | mean parent own-vs-rest acc | worst class gap (parent - "
        "module) | composed top-1 | parent top-1 |"
    )
    emit("|---|---|---|---|---|---|---|")
    for line in summary:
        emit(line)
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
