"""Reuse and replacement on CIFAR-10 (Pan & Rajan's scenarios), each result next to its baseline, in one run.

    python benchmarks/reuse_replace_cifar10.py [--seed 0] [--parent-epochs 2] [--scratch-epochs 2]
        [--samples-per-class 1000] [--weak-class LABEL] [--work-dir DIR] [--output FILE.md] [--quick]

Needs ../shared (the JPEG CIFAR-10 copy and the akamaster ResNet-20). Prints one markdown table per scenario:

1. Composition: the shared ResNet-20 against all ten of its modules composed (full test split, top-1 / top-5).
2. Intra-dataset reuse: four classes drawn with `--seed`; for each of the six pairs, the 2-class classifier composed
   from the shared parent's modules against the parent's architecture (2 labels) trained from scratch on the pair
   for `--scratch-epochs`.
3. Inter-dataset reuse: two ResNet-20 parents trained here (short recipe, `--parent-epochs`) on classes 0-4 and 5-9,
   decomposed, and all ten modules composed, without and with continuous learning, on the full test split; next to
   each parent on its own classes and the shared ResNet-20 on all ten.
4. Replacement: a parent trained here with 10% of one class's training images (`--weak-class`, or drawn with the
   seed), decomposed, and that class's module replaced by the shared ResNet-20's; the class's recall and top-1
   before and after.
5. Cost: wall time and energy / CO2e (codecarbon when installed, else the paper's formula) of decomposing and
   composing against training from scratch, from the measurements above.

Then whether the issue's targets are met. Parents trained here are saved in `--work-dir` (with a JSON record of
their measured training cost) and loaded on a rerun; an interrupted training resumes from its last epoch.
`--quick` shrinks everything (a thousand training images, one epoch) to check the code path in a few minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from statistics import mean
from typing import Any

import datasets
import torch
import transformers
from accelerate.utils import set_seed

import hf_modular
from hf_modular import ComposedModel, ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.data import find_columns, load_image_dataset, select_classes
from hf_modular.emissions import measure_compute
from hf_modular.evaluation import Accuracy, evaluate
from hf_modular.models import CIFAR10_LABELS, import_cifar_resnet
from hf_modular.scenarios import replacement, reuse_versus_scratch, weaken
from hf_modular.train import STATE_FILE, train

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
CHECKPOINT = Path("models") / "akamaster-cifar-resnet" / "resnet20-12fca82f.th"
PRESET = "modular_resnet20"
LABELS = list(CIFAR10_LABELS)
KEEP = 0.1  # the weak class keeps this share of its training images
TARGET_RECALL_GAIN = 0.10
TARGET_COST_RATIO = 20.0
QUICK_TRAIN_ROWS, QUICK_TEST_ROWS, QUICK_SAMPLES_PER_CLASS = 1000, 500, 20

Modules = dict[str, ModularResNetForImageClassification]
Cost = dict[str, Any]


@dataclass
class Table:
    """One scenario's markdown table: a title, a caption saying what is compared, and rows of formatted cells."""

    title: str
    caption: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.caption, "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Parent:
    """A parent trained by this benchmark: the model, its training cost, and whether it was trained or loaded."""

    model: ModularResNetForImageClassification
    training_cost: Cost
    status: str
    record: dict[str, Any]


@dataclass
class Settings:
    """Everything a scenario needs besides its own models."""

    train: datasets.Dataset
    test: datasets.Dataset
    recipe: dict[str, Any]  # for `hf_modular.train.train`, parents trained here
    scratch_recipe: dict[str, Any]  # for the 2-class models trained from scratch
    samples_per_class: int
    seed: int
    work_dir: Path


# -- helpers ------------------------------------------------------------------------------------------------------

_STARTED = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stderr, with the time since the benchmark started (the tables go to stdout)."""
    elapsed = time.perf_counter() - _STARTED
    print(f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {message}", file=sys.stderr, flush=True)


def epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def pp(value: float) -> str:
    return f"{100 * value:+.2f} pp"


def scaled(cost: Cost, factor: float) -> Cost:
    """A share of a measured cost (e.g. 2 of the 10 modules a decomposition built)."""
    keys = ("wall_seconds", "cpu_seconds", "energy_kwh", "co2e_kg")
    return {**{key: cost[key] * factor for key in keys}, "method": cost["method"]}


def summed(*costs: Cost) -> Cost:
    keys = ("wall_seconds", "cpu_seconds", "energy_kwh", "co2e_kg")
    methods = sorted({cost["method"] for cost in costs})
    total = {key: sum(cost[key] for cost in costs) for key in keys}
    return {**total, "method": " + ".join(methods), "extrapolated": any(cost.get("extrapolated") for cost in costs)}


def cost_cell(cost: Cost) -> str:
    return f"{cost['wall_seconds']:.1f} s / {cost['energy_kwh'] * 1000:.3f} Wh / {cost['co2e_kg'] * 1000:.3f} g"


def accuracy_dict(accuracy: Accuracy) -> dict[str, Any]:
    return {"top1": accuracy.top1, "top5": accuracy.top5, "images": accuracy.count, "per_class": accuracy.per_class}


def accuracy_row(name: str, accuracy: dict[str, Any]) -> list[str]:
    return [name, str(accuracy["images"]), pct(accuracy["top1"]), pct(accuracy["top5"])]


def class_range(labels: list[str]) -> str:
    return f"{labels[0]}…{labels[-1]}"


def label_digest(dataset: datasets.Dataset) -> str:
    """A short hash of the label column: identifies a derived training set (subset, weakened) across runs."""
    _, label_column = find_columns(dataset)
    return hashlib.sha256(json.dumps(list(dataset[label_column])).encode()).hexdigest()[:16]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)


# -- models -------------------------------------------------------------------------------------------------------


def trained_parent(name: str, labels: list[str], dataset: datasets.Dataset, settings: Settings) -> Parent:
    """A ResNet-20 parent for `labels` trained on `dataset` with the short recipe, or loaded from the work dir.

    The directory name carries a hash of what defines the parent (labels, training rows, recipe), so a changed
    setting trains a new parent. A loaded parent's cost is the one measured when it was trained (`record.json`).
    When a training was interrupted, the rerun resumes it and its full cost is extrapolated from the epochs it ran.
    """
    recipe = settings.recipe
    spec = {"name": name, "preset": PRESET, "labels": labels, "rows": len(dataset), "labels_sha": label_digest(dataset)}
    spec.update(recipe)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    directory = settings.work_dir / f"{name}-{key}"
    model_dir, record_file, run_dir = directory / "model", directory / "record.json", directory / "run"
    if record_file.is_file() and (model_dir / "config.json").is_file():
        record = json.loads(record_file.read_text())
        model = ModularResNetForImageClassification.from_pretrained(model_dir)
        return Parent(model, record["training_cost"], f"loaded from {directory}", record)

    resumed_from = json.loads((run_dir / STATE_FILE).read_text())["epoch"] if (run_dir / STATE_FILE).is_file() else 0
    if resumed_from >= recipe["epochs"]:  # finished but never recorded: its cost is unknown, so train it again
        shutil.rmtree(run_dir)
        resumed_from = 0
    log(f"training {name} on {len(dataset)} images for {epochs(recipe['epochs'])}" + _resumed(resumed_from))
    set_seed(recipe["seed"])
    config = ModularResNetConfig.from_preset(
        PRESET, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )
    model = ModularResNetForImageClassification(config)
    with measure_compute() as cost:
        history = train(model, dataset, output_dir=run_dir, progress=False, **recipe)
    measured = cost.to_dict()
    factor = recipe["epochs"] / (recipe["epochs"] - resumed_from)
    training_cost = {**scaled(measured, factor), "extrapolated": resumed_from > 0}
    model.save_pretrained(model_dir)
    record = {
        "spec": spec,
        "history": history.epochs,
        "training_cost": training_cost,
        "measured_cost": measured,
        "resumed_from_epoch": resumed_from,
    }
    write_json(record_file, record)
    model = ModularResNetForImageClassification.from_pretrained(model_dir)  # provenance names the directory
    return Parent(model, training_cost, "trained in this run" + _resumed(resumed_from), record)


def _resumed(epoch: int) -> str:
    return f" (resumed after epoch {epoch}; cost extrapolated from the epochs run)" if epoch else ""


def decompose_measured(
    parent: ModularResNetForImageClassification, dataset: datasets.Dataset, settings: Settings
) -> tuple[Modules, Cost]:
    """All of the parent's class modules, and what building them cost."""
    with measure_compute() as cost:
        modules = hf_modular.decompose(
            parent, dataset, samples_per_class=settings.samples_per_class, seed=settings.seed, progress=False
        )
    return modules, cost.to_dict()


def composed_measured(modules: list[ModularResNetForImageClassification]) -> tuple[ComposedModel, Cost]:
    with measure_compute() as cost:
        composed = ComposedModel.from_modules(modules)
    return composed, cost.to_dict()


# -- scenarios ----------------------------------------------------------------------------------------------------


def scenario_composition(
    parent: ModularResNetForImageClassification, modules: Modules, decomposition: Cost, settings: Settings
) -> tuple[Table, dict[str, Any]]:
    """1. The shared parent against all of its modules composed, on the full test split."""
    parent_accuracy = evaluate(parent, settings.test, progress=False)
    composed, composing = composed_measured(list(modules.values()))
    composed_accuracy = evaluate(composed, settings.test, progress=False)
    masked = mean(module.config.provenance.details["masked_fraction"] for module in modules.values())
    jaccard = mean(module.config.provenance.details["jaccard_index"] for module in modules.values())
    table = Table(
        "1. Composition: the shared ResNet-20 vs its 10 modules composed",
        f"akamaster ResNet-20 (../shared), decomposed with {settings.samples_per_class} samples per class in "
        f"{decomposition['wall_seconds']:.1f} s (mean masked nodes {pct(masked)}, mean Jaccard {jaccard:.3f}); "
        f"both measured on the same {parent_accuracy.count} test images in this run.",
        ["model", "top-1", "top-5"],
        [
            ["parent ResNet-20", pct(parent_accuracy.top1), pct(parent_accuracy.top5)],
            ["10 modules, composed", pct(composed_accuracy.top1), pct(composed_accuracy.top5)],
            [
                "difference",
                pp(composed_accuracy.top1 - parent_accuracy.top1),
                pp(composed_accuracy.top5 - parent_accuracy.top5),
            ],
        ],
    )
    raw = {
        "parent": accuracy_dict(parent_accuracy),
        "composed": accuracy_dict(composed_accuracy),
        "decomposition_cost": decomposition,
        "composition_cost": composing,
        "mean_masked_fraction": masked,
        "mean_jaccard": jaccard,
    }
    return table, raw


def scenario_intra_reuse(
    parent: ModularResNetForImageClassification,
    modules: Modules,
    decomposition: Cost,
    classes: list[str],
    settings: Settings,
) -> tuple[Table, dict[str, Any]]:
    """2. Every pair of `classes`: its two modules composed vs the parent's architecture trained on the pair."""
    pairs = []
    for pair in combinations(classes, 2):
        log(f"reuse pair {pair[0]} vs {pair[1]}: composing, and training from scratch")
        _, composing = composed_measured([modules[label] for label in pair])
        result = reuse_versus_scratch(
            modules, list(pair), parent.config, settings.train, settings.test, **settings.scratch_recipe
        )
        result.update(composition_cost=composing, decomposition_share=scaled(decomposition, len(pair) / len(modules)))
        pairs.append(result)
    recipe = settings.scratch_recipe
    train_rows = len(settings.train) * 2 // len(LABELS)
    table = Table(
        f"2. Intra-dataset reuse: 2-class classifiers from the shared parent's modules (classes drawn with seed "
        f"{settings.seed}: {', '.join(classes)})",
        f"Composed: the pair's two modules, no training. From scratch: ResNet-20 (the parent's config, 2 labels) "
        f"trained on the pair's ~{train_rows} training images for {epochs(recipe['epochs'])} (batch "
        f"{recipe['batch_size']}, SGD lr {recipe['learning_rate']}, Nesterov, cosine, crop+flip, seed "
        f"{recipe['seed']}). Both on the pair's test images, top-1.",
        ["pair", "test images", "composed top-1", "from scratch top-1", "composed − scratch"],
    )
    for result in pairs:
        table.rows.append(
            [
                " vs ".join(result["labels"]),
                str(result["images"]),
                pct(result["composed_top1"]),
                pct(result["scratch_top1"]),
                pp(result["composed_top1"] - result["scratch_top1"]),
            ]
        )
    composed_mean = mean(result["composed_top1"] for result in pairs)
    scratch_mean = mean(result["scratch_top1"] for result in pairs)
    table.rows.append(
        ["**mean**", "", pct(composed_mean), pct(scratch_mean), pp(composed_mean - scratch_mean)],
    )
    raw = {"classes": classes, "pairs": pairs, "composed_mean": composed_mean, "scratch_mean": scratch_mean}
    return table, raw


def scenario_inter_reuse(shared_accuracy: dict[str, Any], settings: Settings) -> tuple[Table, dict[str, Any]]:
    """3. Two parents trained on disjoint halves of the classes; their ten modules composed, without and with
    continuous learning, against each parent on its own classes and the shared ResNet-20 on all ten."""
    halves = [LABELS[:5], LABELS[5:]]
    parents, module_sets, trains, costs = [], [], [], []
    for half in halves:
        half_train = select_classes(settings.train, half)
        parent = trained_parent(f"parent-{half[0]}-{half[-1]}", half, half_train, settings)
        log(f"parent {class_range(half)}: {parent.status}; decomposing")
        modules, decomposition = decompose_measured(parent.model, half_train, settings)
        parents.append(parent)
        module_sets.append(modules)
        trains.append(half_train)
        costs.append(decomposition)
    own = [
        evaluate(parent.model, select_classes(settings.test, half), progress=False)
        for parent, half in zip(parents, halves, strict=True)
    ]
    all_modules = [module for modules in module_sets for module in modules.values()]
    composed, composing = composed_measured(all_modules)
    log("evaluating the inter-dataset composition, then continuous learning")
    plain = evaluate(composed, settings.test, progress=False)
    module_datasets = [trains[0]] * len(halves[0]) + [trains[1]] * len(halves[1])
    with measure_compute() as learning:
        adapted_modules = hf_modular.continuous_learning(
            all_modules, module_datasets, seed=settings.seed, progress=False
        )
    adapted = evaluate(ComposedModel.from_modules(adapted_modules), settings.test, progress=False)
    recipe = settings.recipe
    table = Table(
        "3. Inter-dataset reuse: modules of two parents trained on disjoint halves of CIFAR-10",
        f"Parents A ({', '.join(halves[0])}) and B ({', '.join(halves[1])}): ResNet-20 trained on their classes' "
        f"training images for {epochs(recipe['epochs'])} (batch {recipe['batch_size']}, lr {recipe['learning_rate']}, "
        f"seed {recipe['seed']}); A {parents[0].status}, B {parents[1].status}. Each decomposed with "
        f"{settings.samples_per_class} samples per class. Continuous learning re-runs tangling identification with "
        "the other parent's classes as negatives. A 5-class parent's top-5 is 100% by construction.",
        ["model", "test images", "top-1", "top-5"],
        [
            accuracy_row(f"parent A on its 5 classes ({class_range(halves[0])})", accuracy_dict(own[0])),
            accuracy_row(f"parent B on its 5 classes ({class_range(halves[1])})", accuracy_dict(own[1])),
            accuracy_row("shared ResNet-20 on all 10 classes", shared_accuracy),
            accuracy_row("10 modules of A and B, composed", accuracy_dict(plain)),
            accuracy_row("… after continuous learning", accuracy_dict(adapted)),
        ],
    )
    raw = {
        "parents": [
            {"labels": half, "status": parent.status, "training_cost": parent.training_cost, "own": accuracy_dict(acc)}
            for parent, half, acc in zip(parents, halves, own, strict=True)
        ],
        "decomposition_costs": costs,
        "composition_cost": composing,
        "continuous_learning_cost": learning.to_dict(),
        "composed": accuracy_dict(plain),
        "composed_continuous_learning": accuracy_dict(adapted),
    }
    return table, raw


def scenario_replacement(
    weak_label: str, healthy: Modules, healthy_accuracy: dict[str, Any], settings: Settings
) -> tuple[Table, dict[str, Any]]:
    """4. A parent trained with 10% of `weak_label`'s images, decomposed, and that class's module replaced by the
    healthy parent's."""
    weak_train = weaken(settings.train, weak_label, KEEP, seed=settings.seed)
    weak = trained_parent(f"weak-{weak_label}", LABELS, weak_train, settings)
    log(f"weak parent ({weak_label}): {weak.status}; decomposing")
    weak_modules, decomposition = decompose_measured(weak.model, weak_train, settings)
    weak_accuracy = evaluate(weak.model, settings.test, progress=False)
    with measure_compute() as assembling:  # what building the repaired classifier costs, without evaluating it
        repaired = ComposedModel.from_modules(list(weak_modules.values()))
        repaired.replace(weak_label, healthy[weak_label])
    log("evaluating the weak composition before and after the replacement")
    result = replacement(weak_modules, healthy, weak_label, settings.test)
    kept = sum(1 for label in weak_train[find_columns(weak_train)[1]] if LABELS[label] == weak_label)
    recipe = settings.recipe
    table = Table(
        f"4. Replacement: the '{weak_label}' module of a weak parent swapped for the shared ResNet-20's",
        f"Weak parent: ResNet-20 trained on CIFAR-10 with {kept} of the '{weak_label}' training images "
        f"({pct(KEEP)}) and all of the others' ({len(weak_train)} images), {epochs(recipe['epochs'])} (batch "
        f"{recipe['batch_size']}, lr {recipe['learning_rate']}, seed {recipe['seed']}); {weak.status}. Decomposed "
        f"with {settings.samples_per_class} samples per class on its own training set. The healthy module is the "
        f"shared ResNet-20's (scenario 1). Full test split ({weak_accuracy.count} images).",
        ["model", f"recall of '{weak_label}'", "top-1 (10 classes)"],
        [
            [
                "healthy parent (shared ResNet-20)",
                pct(healthy_accuracy["per_class"][weak_label]),
                pct(healthy_accuracy["top1"]),
            ],
            ["weak parent", pct(weak_accuracy.per_class[weak_label]), pct(weak_accuracy.top1)],
            ["weak parent's 10 modules, composed (before)", pct(result["recall_before"]), pct(result["top1_before"])],
            [
                f"… with the healthy '{weak_label}' module (after)",
                pct(result["recall_after"]),
                pct(result["top1_after"]),
            ],
            [
                "change",
                pp(result["recall_after"] - result["recall_before"]),
                pp(result["top1_after"] - result["top1_before"]),
            ],
        ],
    )
    raw = {
        **result,
        "weak_images_kept": kept,
        "weak_parent": accuracy_dict(weak_accuracy),
        "weak_parent_status": weak.status,
        "training_cost": weak.training_cost,
        "decomposition_cost": decomposition,
        "assembly_cost": assembling.to_dict(),
    }
    return table, raw


def scenario_cost(
    composition: dict[str, Any], reuse: dict[str, Any], inter: dict[str, Any], repair: dict[str, Any]
) -> tuple[Table, list[dict[str, Any]]]:
    """5. Decomposition + composition against training from scratch, from the costs measured above."""
    comparisons = [
        {
            "what": f"replacement ('{repair['label']}'): train the weak parent vs decompose it (10 modules) + the "
            "healthy module's share (1/10 of scenario 1's decomposition) + compose + replace",
            "scratch": repair["training_cost"],
            "modular": summed(
                repair["decomposition_cost"], scaled(composition["decomposition_cost"], 0.1), repair["assembly_cost"]
            ),
        }
    ]
    for pair in reuse["pairs"]:
        comparisons.append(
            {
                "what": f"reuse {' vs '.join(pair['labels'])}: train the 2-class model vs 2/10 of scenario 1's "
                "decomposition + compose the pair",
                "scratch": pair["scratch_training"],
                "modular": summed(pair["decomposition_share"], pair["composition_cost"]),
            }
        )
    comparisons.append(
        {
            "what": "inter-dataset: train parents A and B (together all 50k images per epoch, as one 10-class "
            "parent with this recipe) vs decompose both + continuous learning + compose",
            "scratch": summed(*(parent["training_cost"] for parent in inter["parents"])),
            "modular": summed(
                *inter["decomposition_costs"], inter["continuous_learning_cost"], inter["composition_cost"]
            ),
        }
    )
    methods = sorted({c[side]["method"] for c in comparisons for side in ("scratch", "modular")})
    table = Table(
        "5. Cost: decomposition + composition vs training from scratch",
        "Measured in this run (a loaded parent's training cost is the one recorded when it was trained). Evaluation "
        "is excluded on both sides. Cells: wall time / energy / CO2e. Energy and CO2e: "
        f"{'; '.join(methods)} (HF_MODULAR_WATTS={os.environ.get('HF_MODULAR_WATTS', '65')} W at full load, scaled "
        "by CPU utilisation, PUE 1.58, 0.954 lb/kWh, unless codecarbon is named). Training cost grows linearly with "
        "the epochs, so the short recipes used here set these ratios.",
        ["comparison", "from scratch", "decompose + compose", "ratio (time)", "ratio (energy)"],
    )
    for comparison in comparisons:
        scratch, modular = comparison["scratch"], comparison["modular"]
        comparison["ratio_time"] = scratch["wall_seconds"] / modular["wall_seconds"]
        comparison["ratio_energy"] = scratch["energy_kwh"] / max(modular["energy_kwh"], 1e-15)
        flag = " (training cost extrapolated from a resumed run)" if scratch.get("extrapolated") else ""
        table.rows.append(
            [
                comparison["what"] + flag,
                cost_cell(scratch),
                cost_cell(modular),
                f"{comparison['ratio_time']:.1f}x",
                f"{comparison['ratio_energy']:.1f}x",
            ]
        )
    return table, comparisons


def targets_table(reuse: dict[str, Any], repair: dict[str, Any], costs: list[dict[str, Any]]) -> Table:
    """Whether the issue's targets are met, from the numbers above (nothing is tuned to pass)."""
    wins = sum(1 for pair in reuse["pairs"] if pair["composed_top1"] >= pair["scratch_top1"])
    gain = repair["recall_after"] - repair["recall_before"]
    met_costs = sum(1 for c in costs if c["ratio_time"] >= TARGET_COST_RATIO)
    lowest = min(costs, key=lambda c: c["ratio_time"])
    yes = {True: "**met**", False: "**missed**"}
    return Table(
        "Targets",
        "From the tables above.",
        ["target", "measured", "result"],
        [
            [
                "intra-dataset reuse at least as accurate as from scratch (mean top-1 over the pairs)",
                f"{pct(reuse['composed_mean'])} vs {pct(reuse['scratch_mean'])}; composed ≥ scratch on "
                f"{wins} of {len(reuse['pairs'])} pairs",
                yes[reuse["composed_mean"] >= reuse["scratch_mean"]],
            ],
            [
                "replacement raises the weak class's recall by ≥ 10 pp",
                f"{pct(repair['recall_before'])} → {pct(repair['recall_after'])} ({pp(gain)})",
                yes[gain >= TARGET_RECALL_GAIN - 1e-9],
            ],
            [
                "… without lowering overall top-1",
                f"{pct(repair['top1_before'])} → {pct(repair['top1_after'])}",
                yes[repair["top1_after"] >= repair["top1_before"]],
            ],
            [
                f"cost ratio ≥ {TARGET_COST_RATIO:.0f}x (wall time)",
                f"{met_costs} of {len(costs)} comparisons; lowest {lowest['ratio_time']:.1f}x "
                f"({lowest['what'].split(':')[0]})",
                yes[met_costs == len(costs)],
            ],
        ],
    )


# -- main ---------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="draws the reuse classes and the weak class; training")
    parser.add_argument("--parent-epochs", type=int, default=2, help="short recipe for the parents trained here")
    parser.add_argument("--scratch-epochs", type=int, default=2, help="budget of the 2-class models from scratch")
    parser.add_argument("--samples-per-class", type=int, default=1000, help="decomposition samples per class")
    parser.add_argument("--weak-class", choices=LABELS, default=None, help="default: drawn with --seed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/hf_modular_reuse_replace"))
    parser.add_argument("--output", type=Path, default=None, help="write the tables (.md; .json for raw results)")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the code path")
    return parser.parse_args()


def load_settings(args: argparse.Namespace) -> Settings:
    data = SHARED / "data" / "cifar10-jpeg"
    train = load_image_dataset(data / "train.parquet", split="train")
    test = load_image_dataset(data / "test.parquet", split="test")
    epochs, scratch_epochs, samples_per_class = args.parent_epochs, args.scratch_epochs, args.samples_per_class
    if args.quick:  # the rows are shuffled, so the first ones hold every class
        train, test = train.select(range(QUICK_TRAIN_ROWS)), test.select(range(QUICK_TEST_ROWS))
        epochs, scratch_epochs, samples_per_class = 1, 1, QUICK_SAMPLES_PER_CLASS
    common = {"batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    return Settings(
        train=train,
        test=test,
        recipe={"epochs": epochs, **common},
        scratch_recipe={"epochs": scratch_epochs, **common},
        samples_per_class=samples_per_class,
        seed=args.seed,
        work_dir=args.work_dir,
    )


def write_output(path: Path, tables: list[Table], results: dict[str, Any]) -> None:
    """Markdown tables at `path`, and the raw results beside it as JSON (or only JSON when `path` ends in .json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**results, "tables": [table.markdown() for table in tables]}
    if path.suffix == ".json":
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return
    path.write_text("\n\n".join(table.markdown() for table in tables) + "\n")
    path.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


def main() -> None:
    args = parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"This benchmark needs the shared data at {SHARED}.")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    settings = load_settings(args)
    rng = random.Random(args.seed)
    classes = sorted(rng.sample(LABELS, 4), key=LABELS.index)
    weak_label = args.weak_class or rng.choice(LABELS)
    header = (
        f"hf_modular {hf_modular.__version__} from {Path(hf_modular.__file__).parent}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads{', QUICK MODE' if args.quick else ''}; "
        f"{len(settings.train)} training / {len(settings.test)} test images; seed {args.seed}; parents trained "
        f"here: {epochs(settings.recipe['epochs'])}; 2-class models from scratch: "
        f"{epochs(settings.scratch_recipe['epochs'])}; "
        f"batch {args.batch_size}, lr {args.learning_rate}; {settings.samples_per_class} decomposition samples per "
        f"class; reuse classes {classes}; weak class '{weak_label}'; work dir {settings.work_dir}"
    )
    print(header + "\n", flush=True)
    tables: list[Table] = []

    def show(table: Table) -> None:
        tables.append(table)
        print(table.markdown() + "\n", flush=True)

    log("scenario 1: decomposing the shared ResNet-20 and evaluating parent and composition")
    parent = import_cifar_resnet(SHARED / CHECKPOINT, labels=LABELS)
    modules, decomposition = decompose_measured(parent, settings.train, settings)
    table, composition = scenario_composition(parent, modules, decomposition, settings)
    show(table)
    log("scenario 2: intra-dataset reuse")
    table, reuse = scenario_intra_reuse(parent, modules, decomposition, classes, settings)
    show(table)
    log("scenario 3: inter-dataset reuse")
    table, inter = scenario_inter_reuse(composition["parent"], settings)
    show(table)
    log("scenario 4: replacement")
    table, repair = scenario_replacement(weak_label, modules, composition["parent"], settings)
    show(table)
    table, costs = scenario_cost(composition, reuse, inter, repair)
    show(table)
    show(targets_table(reuse, repair, costs))
    total = time.perf_counter() - _STARTED
    print(f"Total wall time: {total / 60:.1f} min", flush=True)
    if args.output:
        results = {
            "settings": header,
            "composition": composition,
            "intra_reuse": reuse,
            "inter_reuse": inter,
            "replacement": repair,
            "cost": costs,
            "total_wall_seconds": total,
        }
        write_output(args.output, tables, results)
        log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
