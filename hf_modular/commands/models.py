"""`info`, `import` and `card`: commands about one saved model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from ..compose import ComposedConfig, ComposedModel
from ..compose.fitting import stale_members
from ..hub import composed_card, module_card, parent_card
from ..models import CIFAR10_LABELS, ModularResNetForImageClassification, import_cifar_resnet
from ..module import REPORT_NAME, count_parameters, describe
from ..saving import OUR_MODEL_TYPES, atomic_directory, check_overwrite, holds_our_output
from .errors import message
from .loading import check_saved_model, load_model, model_source
from .options import add_overwrite_option, add_pickle_option

CHECKPOINT_SUFFIXES = (".th", ".pt", ".pth", ".ckpt", ".tar")


def run_info(args: argparse.Namespace) -> None:
    report = Path(args.model) / REPORT_NAME
    if report.is_file() and not (Path(args.model) / "config.json").is_file():  # a decomposition's output
        record = json.loads(report.read_text())  # --json: all of it
        _print_summary(record if args.json else _decomposition_summary(args.model, record), args.json)
        return
    try:
        model = load_model(args)
    except OSError as error:
        config = _local_composition(args.model)
        if config is None:
            raise
        _print_composition(config, args.model, None, args.json, error)  # what it records, then why it fails
        raise
    if isinstance(model, ComposedModel):
        _print_composition(model.config, args.model, model, args.json)
        return
    config = model.config
    summary = {
        "source": args.model,
        "architecture": config.preset or "modular_resnet (custom)",
        "block_type": config.block_type,
        "layers": config.layers,
        "widths": config.widths,
        "stem": config.stem_type,
        "shortcut": config.shortcut,
        "input": [config.num_channels, config.image_size, config.image_size],
        "parameters": count_parameters(model),
        "labels": [config.id2label[i] for i in range(config.num_labels)],
        "sites": len(model.sites()),
        "masked_sites": len(config.mask_shapes or {}),
        "pruned_widths": config.block_widths if config.is_pruned else None,
        "head": config.head_type if config.head_rows is None else f"{config.head_type} ({config.head_rows} rows)",
        "module": config.module,
        "training": config.training,
        "origin": config.origin,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    summary.pop("module")
    summary["training"] = _training_digest(config.training) if config.training else None
    summary["origin"] = _origin_digest(config.origin) if config.origin else None
    if config.is_module:  # a readable digest; --json has everything
        info = config.provenance
        parent = info.parent.repo_id or info.parent.path or f"an in-memory {info.parent.architecture}"
        summary["module of"] = f"{parent} (weights {info.parent.weights_sha256[:12]})"
        summary["class"] = f"{info.target_label} (index {info.target_index})"
        summary["method"] = ", ".join([info.method.strategy, *(f"{k}={v}" for k, v in info.method.parameters.items())])
        summary.update(describe(info).measures)
        if info.evaluation:
            evaluation = info.evaluation
            summary["binary accuracy"] = f"{100 * evaluation['binary_accuracy']:.2f}% on {evaluation['split']}"
            if evaluation.get("own_vs_rest"):
                own, parent_own = evaluation["own_vs_rest"]["module"], evaluation["own_vs_rest"]["parent"]
                summary["alone (accuracy, ECE)"] = (
                    f"{100 * own['accuracy']:.2f}%, {own['ece']:.4f} (parent's own decision: "
                    f"{100 * parent_own['accuracy']:.2f}%, {parent_own['ece']:.4f})"
                )
    _print_summary(summary, json_output=False)


def _decomposition_summary(source: str, report: dict[str, Any]) -> dict[str, Any]:
    """What `decomposition.json` says: the parent, the method, the modules, and how the composition did."""
    method = report.get("method") or {}
    evaluation = report.get("evaluation") or {}
    measured = None
    if evaluation.get("composed"):
        measured = (
            f"composed top-1 {100 * evaluation['composed']['top1']:.2f}% vs parent "
            f"{100 * evaluation['parent']['top1']:.2f}% on {evaluation.get('images')} images of "
            f"{evaluation.get('dataset')}, split {evaluation.get('split')}"
        )
    modules = report.get("modules") or {}
    return {
        "source": source,
        "decomposition of": report.get("parent"),
        "method": ", ".join([str(method.get("strategy")), *(f"{k}={v}" for k, v in method.items() if k != "strategy")]),
        "modules": [f"{label}: {entry.get('directory')}" for label, entry in modules.items()],
        "evaluation": measured,
        "compose them": f"hf-modular compose {source} --output DIR",
    }


def _origin_digest(origin: dict[str, Any]) -> str:
    """One line of `config.origin`."""
    details = [f"sha256 {origin['sha256'][:12]}" if origin.get("sha256") else None, origin.get("revision")]
    details.append(f"license {origin['license']}" if origin.get("license") else None)
    listed = ", ".join(detail for detail in details if detail)
    return f"imported from {origin.get('source')} ({origin.get('format')}" + (f"; {listed})" if listed else ")")


def _training_digest(training: dict[str, Any]) -> str:
    """One line of `config.training`; --json has all of it."""
    data, final = training.get("dataset") or {}, training.get("final") or {}
    split = f"split {data['split']}, " if data.get("split") else ""
    epochs = training.get("epochs")
    held_out = training.get("eval_dataset") or {}
    on = f" on {held_out['split']}" if held_out.get("split") else ""
    scores = f", top-1 {100 * final['top1']:.2f}%{on}" if "top1" in final else ""
    loss = f": training loss {final['loss']:.4f}{scores}" if "loss" in final else ""
    precision = training.get("mixed_precision")
    return (
        f"{epochs} epoch{'s' if epochs != 1 else ''} on {data.get('name_or_path') or 'unnamed data'} "
        f"({split}{training.get('trained_rows')} images), seed {training.get('seed')}, {training.get('dtype')}"
        f"{f', mixed precision {precision}' if precision not in (None, 'no') else ''}{loss}"
    )


def _local_composition(source: str) -> ComposedConfig | None:
    """The config of the composition saved in the directory `source`, if that is one."""
    try:
        if json.loads((Path(source) / "config.json").read_text()).get("model_type") != ComposedConfig.model_type:
            return None
        return ComposedConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None


def _print_composition(
    config: ComposedConfig,
    source: str,
    composed: ComposedModel | None,
    json_output: bool,
    load_error: OSError | None = None,
) -> None:
    """What `info` says of a composition: from its config, and from its loaded members when there are (`composed`:
    whether a fit is stale). --json gives its records (a local member's source: where it was found, when
    loaded), the members its fit was not made for (null: not loaded), and why its members could not be loaded
    (`load_error`, null when they were), so a script reading the JSON alone knows."""
    labels = [entry["label"] for entry in config.members]
    changed = stale_members(config.fit, labels, list(composed.members)) if config.fit and composed else []
    if json_output:
        record = {
            "source": source,
            "labels": labels,
            "members": config.members,
            "input": [config.num_channels, config.image_size, config.image_size],
            "rule": config.rule,
            "fit": config.fit,
            "stale_members": changed if composed is not None else None,
            "load_error": None if load_error is None else message(load_error),
        }
        print(json.dumps(record, indent=2))
        return
    _print_summary(_composed_summary(config, source, changed), json_output=False)


def _composed_summary(config: ComposedConfig, source: str, changed: list[str]) -> dict[str, Any]:
    """`info`'s digest of a composition (`changed`: the members its fit was not made for)."""
    labels = [entry["label"] for entry in config.members]
    data = (config.fit or {}).get("data", {})
    recorded = data.get("name_or_path")
    fitted_on = recorded or "an in-memory dataset"
    if data.get("revision"):  # a Hub dataset: the commit that was read
        fitted_on += f"@{data['revision']}"
    # Local data is recorded by its file name only, so fitting again needs its path.
    again = f"hf-modular fit {source}" + ("" if recorded and not recorded.startswith("./") else " --dataset PATH")
    stale = f" (stale: {', '.join(changed)} changed since; `{again}` fits it again)" if changed else ""
    return {
        "source": source,
        "composed of": len(labels),
        "labels": labels,
        "members": [
            f"{entry['label']}: {entry.get('source') or entry.get('subfolder')}"
            + (f"@{entry['revision']}" if entry.get("revision") else "")
            for entry in config.members
        ],
        "modules stored inside": "all (self-contained)"
        if all("subfolder" in entry for entry in config.members)
        else f"{sum('subfolder' in entry for entry in config.members)} of {len(config.members)}",
        "input": [config.num_channels, config.image_size, config.image_size],
        "rule": f"{config.rule}, over the fitted heads" if config.fit else config.rule,
        "fit": None if not config.fit else f"{config.fit['data']['images']} images of {fitted_on}" + stale,
    }


def _print_summary(summary: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print(json.dumps(summary, indent=2))
        return
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        if value is not None:
            print(f"{key:<{width}}  {value}")


def run_import(args: argparse.Namespace) -> None:
    check_overwrite(args.output, args.overwrite)
    source = Path(args.checkpoint)
    if source.is_file() or source.suffix in CHECKPOINT_SUFFIXES:  # a CIFAR checkpoint file from the wild
        labels = args.labels.split(",") if args.labels else CIFAR10_LABELS
        model = import_cifar_resnet(args.checkpoint, labels=labels, license=args.license)
    else:  # a transformers ResNet: a saved directory or a Hub repo id
        if args.labels:
            raise ValueError("--labels is for checkpoint files; a transformers ResNet brings its own labels.")
        if source.is_dir() and (source / REPORT_NAME).is_file():
            raise ValueError(
                f"{args.checkpoint} is a decomposition's output, written by hf-modular: there is nothing to import. "
                "Its *-module directories are modules, ready to compose or push."
            )
        if source.is_dir() and holds_our_output(source):
            raise ValueError(
                f"{args.checkpoint} is already an hf-modular model directory: there is nothing to import. Use it as "
                f"it is (`hf-modular info {args.checkpoint}`, or decompose it)."
            )
        model = ModularResNetForImageClassification.from_transformers(
            args.checkpoint, revision=args.revision, license=args.license
        )
    with atomic_directory(args.output, keep=()) as staging:  # a model directory is replaced as a whole
        model.save_pretrained(staging)
    print(f"Saved {model.config.preset or 'modular_resnet'} ({model.config.num_labels} classes) to {args.output}")


def run_card(args: argparse.Namespace) -> None:
    directory = Path(model_source(args.directory))
    check_saved_model(str(directory), expected=OUR_MODEL_TYPES)
    config = AutoConfig.from_pretrained(directory)
    if isinstance(config, ComposedConfig):
        card = composed_card(config, args.repo_id, license=args.license)
    elif config.is_module:
        card = module_card(config, args.repo_id, license=args.license)
    else:
        model = ModularResNetForImageClassification.from_pretrained(directory)
        card = parent_card(model, args.repo_id, license=args.license)
    card.save(directory / "README.md")
    print(f"Wrote {directory / 'README.md'}")


def add_info_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "model",
        metavar="PATH_OR_REPO",
        help="a model, module or composition (directory or repo id), or a decomposition's output directory",
    )
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    command.add_argument("--json", action="store_true", help="print JSON")
    add_pickle_option(command)
    command.set_defaults(run=run_info)


def add_import_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "checkpoint",
        metavar="SOURCE",
        help="a CIFAR checkpoint file (.th/.pt, read with weights_only=True), or a transformers ResNet "
        "(ResNetForImageClassification: directory or Hub repo id, e.g. microsoft/resnet-50)",
    )
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit of a transformers ResNet")
    command.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    add_overwrite_option(command)
    command.add_argument("--labels", default=None, help="comma-separated class names (default: CIFAR-10's)")
    command.add_argument(
        "--license", default=None, help="the weights' license (a Hub license id), recorded for the cards"
    )
    command.set_defaults(run=run_import)


def add_card_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("directory", metavar="DIR", help="a module's, parent's or composition's directory")
    command.add_argument("--repo-id", default=None, help="the Hub repo the card's snippets should name")
    command.add_argument("--license", default=None, help="license id for the card")
    command.set_defaults(run=run_card)
