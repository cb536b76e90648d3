"""The demo: the whole idea on a dataset that ships with scikit-learn, offline, in minutes on a CPU.

1. Train a small ModularResNet on scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes). The
   network is adapted to the data honestly: one input channel, 8x8 input, a 3x3 stem and three narrow stages.
2. Decompose it into 10 modules (the same Accelerate path as any decomposition) and save them as Hub-ready
   directories with their cards.
3. Compose the modules back and compare with the parent on the held-out split.
4. Reuse: a 2-class classifier from two modules, against the same architecture trained on those two classes.
5. Replacement: a parent trained with 10% of one class's images, repaired with the healthy parent's module.
6. Tables, `summary.json` and `report.md` with plots.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from accelerate.utils import set_seed
from PIL import Image

from .decompose import decompose, decompose_to_directory
from .emissions import measure_compute
from .models import ModularResNetConfig, ModularResNetForImageClassification, load_module
from .scenarios import replacement, reuse_versus_scratch, weaken
from .train import train

logger = logging.getLogger(__name__)

DIGIT_NAMES = [str(digit) for digit in range(10)]


def digits_dataset(seed: int = 0, test_size: float = 0.2) -> datasets.DatasetDict:
    """scikit-learn's digits as a `datasets.DatasetDict` ("train", "test"), stratified, images as 8x8 "L" PIL."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((image * (255 / 16)).round().astype(np.uint8), mode="L") for image in digits.images]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    return full.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def digits_parent_config() -> ModularResNetConfig:
    """A ResNet for 8x8 grey digits: 3x3 stem, three stages of 16/32/64 channels (8 -> 4 -> 2 pixels)."""
    return ModularResNetConfig(
        layers=[1, 1, 1],
        widths=[16, 32, 64],
        stem_width=16,
        num_channels=1,
        image_size=8,
        image_mean=[0.5],
        image_std=[0.5],
        id2label=dict(enumerate(DIGIT_NAMES)),
    )


def run_demo(output: str | os.PathLike, *, seed: int = 0, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, decompose, compose, reuse and replace on the digits; returns a summary (also written to
    `output/summary.json`, with `output/report.md` and its plots)."""
    output = Path(output)
    splits = digits_dataset(seed)
    training = {
        "epochs": 4 if quick else 15,
        "batch_size": 64,
        "learning_rate": 0.05,
        "horizontal_flip": False,  # a mirrored digit is another digit, or none
        "seed": seed,
    }
    samples_per_class = 40 if quick else 100

    set_seed(seed)  # the initial weights too: the same seed gives the same demo
    parent = ModularResNetForImageClassification(digits_parent_config())
    logger.info("1/4 Training a parent on %d digits for %d epochs", len(splits["train"]), training["epochs"])
    with measure_compute() as parent_cost:
        history = train(parent, splits["train"], eval_dataset=splits["test"], progress=progress, **training)
    parent.save_pretrained(output / "parent")
    parent = ModularResNetForImageClassification.from_pretrained(output / "parent")  # provenance names the directory
    logger.info(
        "    trained in %.0f s; top-1 %s on the held-out images",
        parent_cost.wall_seconds,
        _pct(history.final.get("top1", 0)),
    )
    logger.info("2/4 Decomposing it into one module per class, and composing the modules")
    report = decompose_to_directory(
        parent,
        splits["train"],
        output / "modules",
        eval_dataset=splits["test"],
        samples_per_class=samples_per_class,
        seed=seed,
        progress=progress,
    )
    modules = {
        label: load_module(str(output / "modules" / row["directory"])) for label, row in report["modules"].items()
    }
    decomposition_cost = next(iter(modules.values())).config.provenance.compute
    logger.info(
        "    decomposed in %.1f s; composed top-1 %s (parent %s)",
        decomposition_cost["wall_seconds"],
        _pct(report["evaluation"]["composed"]["top1"]),
        _pct(report["evaluation"]["parent"]["top1"]),
    )

    rng = random.Random(seed)
    pair = sorted(rng.sample(DIGIT_NAMES, 2))
    logger.info("3/4 Reuse: a %s classifier from two modules, against one trained from scratch", " vs ".join(pair))
    reuse = reuse_versus_scratch(modules, pair, parent.config, splits["train"], splits["test"], **training)
    logger.info("    composed %s, from scratch %s", _pct(reuse["composed_top1"]), _pct(reuse["scratch_top1"]))

    weak_label = rng.choice(DIGIT_NAMES)
    weak_train = weaken(splits["train"], weak_label, keep=0.1, seed=seed)
    logger.info("4/4 Replacement: a parent trained on 10%% of the '%s' images, repaired by a module", weak_label)
    set_seed(seed)
    weak_parent = ModularResNetForImageClassification(digits_parent_config())
    train(weak_parent, weak_train, progress=progress, **training)
    weak_modules = decompose(weak_parent, weak_train, samples_per_class=samples_per_class, seed=seed, progress=False)
    repair = replacement(weak_modules, modules, weak_label, splits["test"])
    logger.info(
        "    recall of '%s': %s before, %s after",
        weak_label,
        _pct(repair["recall_before"]),
        _pct(repair["recall_after"]),
    )

    summary = {
        "dataset": "scikit-learn digits (8x8 grey, 10 classes)",
        "train_images": len(splits["train"]),
        "test_images": len(splits["test"]),
        "training": {"epochs": len(history.epochs), "final": history.final, **parent_cost.to_dict()},
        "parent": report["evaluation"]["parent"],
        "composed": report["evaluation"]["composed"],
        "per_class": report["evaluation"]["per_class"],
        "modules": {
            label: {key: row[key] for key in ("masked_fraction", "jaccard_index", "binary_accuracy")}
            for label, row in report["modules"].items()
        },
        "decomposition": decomposition_cost,
        "reuse": reuse,
        "replacement": repair,
        "cost_ratio": {
            "training_over_decomposition_seconds": parent_cost.wall_seconds / decomposition_cost["wall_seconds"],
            "training_over_decomposition_co2e": parent_cost.co2e_kg / max(decomposition_cost["co2e_kg"], 1e-12),
        },
        "output": str(output),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(summary, output)
    return summary


def write_report(summary: dict[str, Any], output: Path) -> None:
    """`report.md` with the demo's tables, and PNG plots beside it when matplotlib is installed."""
    plots = _plots(summary, output)
    reuse, repair, ratio = summary["reuse"], summary["replacement"], summary["cost_ratio"]
    lines = [
        "# hf-modular demo",
        "",
        f"{summary['dataset']}: {summary['train_images']} training and {summary['test_images']} held-out images.",
        "",
        "## Parent and composed modules (held-out images)",
        "",
        "| model | top-1 | top-5 |",
        "|---|---|---|",
        f"| parent | {_pct(summary['parent']['top1'])} | {_pct(summary['parent']['top5'])} |",
        f"| 10 modules, composed | {_pct(summary['composed']['top1'])} | {_pct(summary['composed']['top5'])} |",
        "",
        "| class | parent recall | composed recall | module binary accuracy | masked nodes | Jaccard |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in summary["modules"].items():
        recall = summary["per_class"][label]
        lines.append(
            f"| {label} | {_pct(recall['parent'])} | {_pct(recall['composed'])} | {_pct(row['binary_accuracy'])} "
            f"| {_pct(row['masked_fraction'])} | {row['jaccard_index']:.3f} |"
        )
    lines += [
        "",
        f"## Reuse: a {' vs '.join(reuse['labels'])} classifier ({reuse['images']} held-out images)",
        "",
        "| model | top-1 |",
        "|---|---|",
        f"| two modules, composed (no training) | {_pct(reuse['composed_top1'])} |",
        f"| same architecture trained from scratch on the two classes (same epochs) | {_pct(reuse['scratch_top1'])} |",
        "",
        f"## Replacement: a parent trained with 10% of the '{repair['label']}' images, repaired",
        "",
        "| | recall of '" + repair["label"] + "' | top-1 (all classes) |",
        "|---|---|---|",
        f"| weak parent's modules, composed | {_pct(repair['recall_before'])} | {_pct(repair['top1_before'])} |",
        f"| with the healthy parent's '{repair['label']}' module | {_pct(repair['recall_after'])} "
        f"| {_pct(repair['top1_after'])} |",
        "",
        "## Cost",
        "",
        "| work | wall time | energy | CO2e |",
        "|---|---|---|---|",
        _cost_row("train the parent", summary["training"]),
        _cost_row("decompose it into 10 modules", summary["decomposition"]),
        _cost_row("train the 2-class model from scratch", reuse["scratch_training"]),
        "",
        f"Training the parent took {ratio['training_over_decomposition_seconds']:.0f}x the time of decomposing it. "
        f"Energy: {summary['decomposition']['method']}.",
    ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{title}]({name})" for title, name in plots]
    else:
        lines += ["", "(Install matplotlib, `pip install hf_modular[demo]`, for the plots.)"]
    (output / "report.md").write_text("\n".join(lines) + "\n")


def _plots(summary: dict[str, Any], output: Path) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    labels = list(summary["modules"])
    made = []
    figure, axis = plt.subplots(figsize=(7, 3.2))
    positions = np.arange(len(labels))
    for offset, key in ((-0.2, "parent"), (0.2, "composed")):
        values = [100 * summary["per_class"][label][key] for label in labels]
        axis.bar(positions + offset, values, width=0.4, label=key)
    axis.set(xticks=positions, xticklabels=labels, ylabel="recall (%)", title="Per-class accuracy, held-out images")
    axis.set_ylim(0, 119)  # headroom so the legend sits above the bars
    axis.legend(loc="upper center", ncol=2)
    made.append(("Per-class accuracy: parent vs composed", _save(figure, output / "per_class_accuracy.png")))
    figure, axis = plt.subplots(figsize=(7, 3.2))
    masked = [100 * summary["modules"][label]["masked_fraction"] for label in labels]
    axis.bar(positions, masked, color="tab:green")
    axis.set(xticks=positions, xticklabels=labels, ylabel="masked nodes (%)", xlabel="module")
    axis.set_title("Share of the parent's nodes each module masks")
    made.append(("Masked fraction per module", _save(figure, output / "masked_fraction.png")))
    figure, axis = plt.subplots(figsize=(7, 3.2))
    work = {
        "train parent": summary["training"]["wall_seconds"],
        "decompose (10 modules)": summary["decomposition"]["wall_seconds"],
        "train 2-class from scratch": summary["reuse"]["scratch_training"]["wall_seconds"],
    }
    axis.barh(list(work), list(work.values()), color=["tab:red", "tab:blue", "tab:orange"])
    axis.set(xlabel="wall time (s)", title="Cost: training vs decomposition")
    made.append(("Cost comparison", _save(figure, output / "cost.png")))
    return made


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path.name


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _cost_row(name: str, record: dict[str, Any]) -> str:
    return f"| {name} | {record['wall_seconds']:.1f} s | {record['energy_kwh']:.2e} kWh | {record['co2e_kg']:.2e} kg |"
