"""What each `hf-modular` command does: its options (`ARGUMENTS`) and its code, each a thin layer over a library
function. `cli.py` parses the command line and loads this module only for a command that runs or shows its options,
since it imports torch and transformers."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import shutil
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import huggingface_hub
from accelerate.utils import set_seed
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModelForImageClassification

from . import console
from .compose import ComposedConfig, ComposedModel
from .compose.fitting import stale_members
from .data import dataset_name, find_columns, label_names, load_image_dataset, pinned_revision
from .decompose import REPORT_NAME, STRATEGIES, decompose, decompose_to_directory
from .demo import run_demo
from .distributed import MIXED_PRECISION, distributed_state, on_main_process, training_accelerator
from .evaluation import evaluate
from .hub import DEFAULT_NAME_TEMPLATE, composed_card, module_card, parent_card, push_directory, push_modules
from .hub.publish import without_url_queries
from .models import CIFAR10_LABELS, ModularResNetConfig, ModularResNetForImageClassification, import_cifar_resnet
from .module import describe
from .saving import atomic_directory, check_overwrite, holds_our_output
from .train import STATE_FILE, train
from .validation import cli_number

logger = logging.getLogger("hf_modular")
CHECKPOINTS = "training"  # `hf-modular train`'s checkpoints, inside its --output


def _model_source(name: str) -> str:
    """A local path that does not exist is an error here, not a Hub lookup of a malformed repo id."""
    looks_local = name.startswith(("/", "./", "../", "~", os.sep))
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"No such directory: {name}. Give a saved model's directory or a Hub repo id.")
    return str(Path(name).expanduser()) if looks_local else name


def _load(args: argparse.Namespace):
    return _from_pretrained(ModularResNetForImageClassification, args)


def _load_any(args: argparse.Namespace):
    """A classifier, a module or a composed model, by what its config.json says."""
    return _from_pretrained(AutoModelForImageClassification, args)


def _from_pretrained(model_class: Any, args: argparse.Namespace) -> Any:
    """`args.model` loaded by `model_class`, with errors that say what the argument is instead of what a loader
    expected of it; pickle weights only with --allow-pickle."""
    source = _model_source(args.model)
    check_saved_model(source)
    # None: safetensors where there are some, else the pickle (False would refuse safetensors altogether).
    pickle = {"use_safetensors": None} if getattr(args, "allow_pickle", False) else {}
    try:
        return model_class.from_pretrained(source, revision=args.revision, **pickle)
    except OSError as error:
        if Path(source).exists():
            raise
        raise OSError(
            f"{args.model} is not a local directory, and as a Hub repo id it could not be loaded: {error}"
        ) from error


def check_saved_model(source: str) -> None:
    """A file, or a directory with no config.json, is named as such (transformers would say a JSON was invalid)."""
    path = Path(source)
    if path.is_file():
        checkpoint = path.suffix in {".th", ".pt", ".pth", ".tar", ".bin"}
        hint = f" (a CIFAR ResNet checkpoint becomes one with `hf-modular import {source} --output DIR`)"
        raise ValueError(
            f"{source} is a file; give a saved model's directory or a Hub repo id{hint if checkpoint else ''}."
        )
    if path.is_dir() and (path / REPORT_NAME).is_file():
        raise FileNotFoundError(
            f"{source} is a decomposition's output: it holds one module per class. Give one of its *-module "
            "directories."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{source} has no config.json, so it holds no saved model. Give the directory that save_pretrained or an "
            "hf-modular command wrote."
        )


def _info(args: argparse.Namespace) -> None:
    model = _load_any(args)
    if isinstance(model, ComposedModel):
        _print_summary(_composed_summary(model, args.model), args.json)
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
        "parameters": sum(p.numel() for p in model.parameters()),
        "labels": [config.id2label[i] for i in range(config.num_labels)],
        "sites": len(model.sites()),
        "masked_sites": len(config.mask_shapes or {}),
        "pruned_widths": config.block_widths if config.is_pruned else None,
        "head": config.head_type if config.head_rows is None else f"{config.head_type} ({config.head_rows} rows)",
        "module": config.module,
        "training": config.training,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    summary.pop("module")
    summary["training"] = _training_digest(config.training) if config.training else None
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


def _composed_summary(composed: ComposedModel, source: str) -> dict[str, Any]:
    config = composed.config
    fitted_on = (config.fit or {}).get("data", {}).get("name_or_path") or "an in-memory dataset"
    changed = stale_members(config.fit, composed.labels, list(composed.members)) if config.fit else []
    stale = f" (stale: {', '.join(changed)} changed since; fit it again)" if changed else ""
    return {
        "source": source,
        "composed of": len(composed.labels),
        "labels": composed.labels,
        "members": [
            f"{entry['label']}: {entry.get('source') or entry.get('subfolder')}"
            + (f"@{entry['revision'][:12]}" if entry.get("revision") else "")
            for entry in config.members
        ],
        "input": [config.num_channels, config.image_size, config.image_size],
        "rule": config.rule,
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


COUNT = cli_number(minimum=1, integer=True)  # sizes and counts: a whole number, at least one
CHECKPOINT_SUFFIXES = (".th", ".pt", ".pth", ".ckpt", ".tar")


def _import(args: argparse.Namespace) -> None:
    check_overwrite(args.output, args.overwrite)
    source = Path(args.checkpoint)
    if source.is_file() or source.suffix in CHECKPOINT_SUFFIXES:  # a CIFAR checkpoint file from the wild
        labels = args.labels.split(",") if args.labels else CIFAR10_LABELS
        model = import_cifar_resnet(args.checkpoint, labels=labels)
    else:  # a transformers ResNet: a saved directory or a Hub repo id
        if args.labels:
            raise ValueError("--labels is for checkpoint files; a transformers ResNet brings its own labels.")
        if source.is_dir() and holds_our_output(source):
            raise ValueError(
                f"{args.checkpoint} is already an hf-modular model directory: there is nothing to import. Use it as "
                f"it is (`hf-modular info {args.checkpoint}`, or decompose it)."
            )
        model = ModularResNetForImageClassification.from_transformers(args.checkpoint, revision=args.revision)
    with atomic_directory(args.output, keep=()) as staging:  # a model directory is replaced as a whole
        model.save_pretrained(staging)
    print(f"Saved {model.config.preset or 'modular_resnet'} ({model.config.num_labels} classes) to {args.output}")


def _evaluate(args: argparse.Namespace) -> None:
    state = distributed_state(cpu=args.cpu, mixed_precision=args.mixed_precision)
    model = _load_any(args).to(state.device)
    dataset = load_image_dataset(
        args.dataset, split=args.split, revision=args.dataset_revision, config_name=args.dataset_config
    )
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    result = evaluate(
        model,
        dataset,
        image_column=args.image_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
        state=state,
        progress=not args.quiet,
        num_workers=args.num_workers,
    )
    if not state.is_main_process:
        return
    if args.json:
        print(json.dumps(vars(result), indent=2))
        return
    print(f"top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  on {result.count} images")
    for label, recall in result.per_class.items():
        print(f"  {label:<20} {100 * recall:6.2f}%")


def _decompose(args: argparse.Namespace) -> None:
    if args.eval_limit and not args.eval_split:
        raise ValueError("--eval-limit limits the evaluation, which needs --eval-split (e.g. --eval-split test).")
    state = distributed_state(cpu=args.cpu, mixed_precision=args.mixed_precision)
    strategy_options = _strategy_options(args)
    model = _load(args)
    report = decompose_to_directory(
        model,
        args.dataset,
        args.output,
        eval_dataset=args.dataset if args.eval_split else None,
        eval_split=args.eval_split or "test",
        eval_limit=args.eval_limit,
        classes=[name.strip() for name in args.classes.split(",")] if args.classes is not None else None,
        accelerator=state,
        progress=not args.quiet,
        overwrite=args.overwrite,
        samples_per_class=args.samples_per_class,
        negatives_ratio=args.negatives_ratio,
        split=args.split,
        dataset_revision=args.dataset_revision,
        dataset_config=args.dataset_config,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        seed=args.seed,
        strategy=args.strategy,
        **strategy_options,
    )
    if not state.is_main_process:
        return
    if args.push_to:
        _print_pushes(push_modules(args.output, args.push_to, name_template=args.name_template, private=args.private))
    modules = {
        label: ModularResNetConfig.from_pretrained(Path(args.output) / row["directory"]).provenance
        for label, row in report["modules"].items()
    }
    strategy = STRATEGIES[args.strategy]
    headline = strategy.headline_format.format(report[f"mean_{strategy.headline}"])
    print(f"{len(modules)} modules in {args.output}  ({headline})")
    evaluation = report.get("evaluation")
    if evaluation:
        parent, composed = evaluation["parent"], evaluation["composed"]
        print(f"on {args.eval_split} ({evaluation['images']} images):")
        print(f"  parent    top-1 {100 * parent['top1']:6.2f}%  top-5 {100 * parent['top5']:6.2f}%")
        print(f"  composed  top-1 {100 * composed['top1']:6.2f}%  top-5 {100 * composed['top5']:6.2f}%")
    measures = {label: describe(info).measures for label, info in modules.items()}
    columns = list(next(iter(measures.values())))
    print(f"{'module':<20} " + " ".join(f"{column:>8}" for column in columns) + f" {'binary acc':>10}")
    for label, row in report["modules"].items():
        binary = f"{100 * row['binary_accuracy']:9.2f}%" if "binary_accuracy" in row else "         -"
        print(f"{label:<20} " + " ".join(f"{measures[label][column]:>8}" for column in columns) + f" {binary}")


def _strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave for the chosen strategy; an option of another strategy is an error."""
    given = {name: getattr(args, name) for name in _strategy_flags() if hasattr(args, name)}
    chosen = {option.name for option in dataclasses.fields(STRATEGIES[args.strategy])}
    foreign = sorted(name for name in given if name not in chosen)
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise ValueError(f"{flags} is not an option of --strategy {args.strategy}; see hf-modular decompose --help.")
    STRATEGIES[args.strategy](**given)  # its own checks (e.g. --delta nan), before the model loads
    return given


def _strategy_flags() -> dict[str, list[tuple[str, dataclasses.Field, Any]]]:
    """Every strategy option, by name: (strategy, its dataclass field, its type) for each strategy that has it."""
    flags: dict[str, list[tuple[str, dataclasses.Field, Any]]] = {}
    for name, strategy in STRATEGIES.items():
        hints = typing.get_type_hints(strategy)
        for option in dataclasses.fields(strategy):
            flags.setdefault(option.name, []).append((name, option, hints[option.name]))
    return flags


def _add_strategy_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option of every registered strategy, built from its dataclass field (type, default, help,
    choices), so the CLI never restates a default. Flags the user does not give stay out of `args`."""
    for name, owners in _strategy_flags().items():
        strategy_names = ", ".join(owner for owner, _, _ in owners)
        _, option, annotation = owners[0]
        kind = _flag_type(annotation)
        help_text = f"{strategy_names}: {option.metadata.get('help', '')}"
        if option.default is not None:  # None's meaning is in the help itself
            help_text += f" (default: {option.default})"
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(
                flag, type=kind, choices=option.metadata.get("choices"), default=argparse.SUPPRESS, help=help_text
            )


def _flag_type(annotation: Any) -> type:
    """The command-line type of an option annotated `int`, `float`, `bool`, `str` or `str | None`."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    return arguments[0] if arguments else annotation


def _print_pushes(results: dict) -> None:
    for label, result in results.items():
        state = "new commit" if result.changed else "unchanged"
        print(f"{label:<20} {result.repo_id}  commit {result.commit_sha[:12]}  ({state})")


def _push(args: argparse.Namespace) -> None:
    _print_pushes(
        push_modules(
            args.directory,
            args.namespace,
            name_template=args.name_template,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            license=args.license,
            remote_code=args.remote_code,
        )
    )


def _push_parent(args: argparse.Namespace) -> None:
    result = push_directory(
        _model_source(args.directory),
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        license=args.license,
        remote_code=args.remote_code,
    )
    _print_pushes({"model": result})


def _card(args: argparse.Namespace) -> None:
    directory = Path(_model_source(args.directory))
    check_saved_model(str(directory))
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


def _compose(args: argparse.Namespace) -> None:
    pairs = [pair.strip() for given in args.rename or [] for pair in given.split(",")]
    malformed = [pair for pair in pairs if "=" not in pair]
    if malformed:
        raise ValueError(f"--rename takes OLD=NEW pairs; got {malformed}.")
    rename = dict(pair.split("=", 1) for pair in pairs) or None
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    _refuse_an_output_over_a_member(args.output, args.modules)
    check_overwrite(args.output, args.overwrite)
    composed = ComposedModel.from_modules([_model_source(m) for m in args.modules], rename=rename, labels=labels)
    if args.calibrate:
        calibration = composed.calibrate(load_image_dataset(args.calibrate, split=args.calibrate_split))
        print("Calibrated (scale, bias): " + ", ".join(f"{k} {a:.3g} {b:+.3g}" for k, (a, b) in calibration.items()))
    if args.fit:
        _fit(composed, args)
    with atomic_directory(args.output, keep=()) as staging:
        composed.save_pretrained(staging, materialize=args.materialize)
    print(f"Composed {len(composed.labels)} modules ({', '.join(composed.labels)}) into {args.output}")
    if args.push_to:
        pushed = composed.push_to_hub(args.push_to, materialize=args.materialize, private=args.private)
        _print_pushes({"composed": pushed})


def _refuse_an_output_over_a_member(output: str, modules: list[str]) -> None:
    """A composition's --output must not be, hold or sit inside one of the module directories it uses."""
    paths = [Path(module.split("@")[0]) for module in modules]
    inside = [str(path) for path in paths if path.exists() and _overlaps(path, Path(output))]
    if inside:
        raise ValueError(f"--output {output} would replace a module being composed ({', '.join(inside)}).")


def _overlaps(path: Path, other: Path) -> bool:
    """Whether one of the two directories is, or holds, the other."""
    path, other = path.resolve(), other.resolve()
    return path.is_relative_to(other) or other.is_relative_to(path)


def _fit(composed: ComposedModel, args: argparse.Namespace) -> None:
    record = composed.fit(  # a full dataset is the usual input here: the composition's classes are picked
        args.fit,
        split=args.fit_split,
        images_per_class=args.images_per_class,
        other_classes="skip",
        progress=not args.quiet,
    )
    print(f"Fitted each module's head on {record['data']['images']} images in {record['seconds']:.1f} s")


def _refuse_to_leave_a_stale_fit(composed: ComposedModel, args: argparse.Namespace) -> None:
    """A fitted or calibrated composition's fit does not cover a new module: replace fits again or drops it."""
    config, refit = composed.config, args.fit or args.calibrate or args.drop_fit
    if config.fit and not (args.fit or args.drop_fit):
        data = config.fit["data"]
        raise ValueError(
            f"{args.composed} was fitted (on {data['images']} images of {data['name_or_path'] or 'a dataset'}), and "
            "the fitted heads would not cover the new module; nothing was written. Add --fit DATA [--fit-split "
            "SPLIT] to fit it again, or --drop-fit to answer with the modules' own heads."
        )
    if config.rule == "calibrated" and not refit:
        raise ValueError(
            f"{args.composed} is calibrated, and its calibration would not cover the new module; nothing was "
            "written. Add --calibrate DATA [--calibrate-split SPLIT] to calibrate it again, or --drop-fit to answer "
            "by the paper's vote."
        )


def _replace(args: argparse.Namespace) -> None:
    if args.output is not None and Path(args.output).resolve() != Path(args.composed).resolve():
        check_overwrite(args.output, args.overwrite)
    if (args.fit or args.calibrate) and args.drop_fit:
        raise ValueError("--fit and --calibrate fit the composition again and --drop-fit drops its fit: give one.")
    composed = ComposedModel.from_pretrained(_model_source(args.composed))
    _refuse_to_leave_a_stale_fit(composed, args)
    in_place = args.output is None or Path(args.output).resolve() == Path(args.composed).resolve()
    if not in_place:  # before any fitting: the members after the swap are the others and the new one
        others = [entry["source"] for entry in composed.config.members if entry.get("source")]
        _refuse_an_output_over_a_member(args.output, [*others, args.module])
    # A composition that holds its modules keeps holding them: it must not start to depend on the new one's path.
    materialize = args.materialize or all("subfolder" in entry for entry in composed.config.members)
    composed.replace(args.label, _model_source(args.module), relabel=args.relabel)
    if args.drop_fit:
        composed.config.fit, composed.config.rule, composed.config.calibration = None, "vote", None
    if args.fit:
        _fit(composed, args)
    if args.calibrate:
        composed.calibrate(load_image_dataset(args.calibrate, split=args.calibrate_split), progress=not args.quiet)
    output = args.output or args.composed
    if in_place:
        composed.save_pretrained(output, materialize=materialize)  # in place: files the user added there stay
    else:
        with atomic_directory(args.output, keep=()) as staging:  # another directory is replaced as a whole
            composed.save_pretrained(staging, materialize=materialize)
    inside = " (modules stored inside)" if materialize else ""
    print(f"Replaced the {args.label!r} module; saved to {output}{inside}")


def _demo(args: argparse.Namespace) -> None:
    check_overwrite(args.output, args.overwrite)
    if args.overwrite and Path(args.output).exists():
        shutil.rmtree(args.output)  # the demo fills its folder step by step: an earlier run's files go first
    summary = run_demo(args.output, seed=args.seed, quick=args.quick, progress=not args.quiet)
    if args.push_to:
        summary["pushed"] = {
            label: result.repo_id for label, result in push_modules(Path(args.output) / "modules", args.push_to).items()
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print((Path(summary["output"]) / "report.md").read_text())
    print(f"Parent, modules (with cards), summary.json and report.md are in {summary['output']}.")


def _train(args: argparse.Namespace) -> None:
    output = Path(args.output)
    accelerator = training_accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    if not (output.is_dir() and {entry.name for entry in output.iterdir()} <= {CHECKPOINTS}):
        check_overwrite(output, args.overwrite)  # an interrupted run's checkpoints alone are resumed, not refused
    if args.overwrite and (output / CHECKPOINTS).exists():
        if accelerator.is_main_process:
            shutil.rmtree(output / CHECKPOINTS)  # another run's checkpoints must not be resumed
        accelerator.wait_for_everyone()
    config_name = args.dataset_config
    # One commit of a Hub dataset for both splits and the record, the same on every process.
    revision = on_main_process(lambda: pinned_revision(args.dataset, args.dataset_revision), accelerator)
    train_split = load_image_dataset(args.dataset, split=args.split, revision=revision, config_name=config_name)
    eval_split = (
        load_image_dataset(args.dataset, split=args.eval_split, revision=revision, config_name=config_name)
        if args.eval_split
        else None
    )
    _, label_column = find_columns(train_split)
    labels = label_names(train_split, label_column)
    set_seed(args.seed)  # the new model's initial weights too: the same --seed gives the same run
    if args.from_timm:  # a timm ResNet's architecture (and weights, with pretrained=True) with a new head
        model = ModularResNetForImageClassification.from_timm(
            args.from_timm, pretrained=args.pretrained, num_classes=len(labels)
        )
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: index for index, label in enumerate(labels)}
    else:
        config = ModularResNetConfig.from_preset(args.preset, id2label=dict(enumerate(labels)))
        model = ModularResNetForImageClassification(config)
    history = train(
        model,
        train_split,
        eval_dataset=eval_split,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        horizontal_flip=not args.no_flip,
        seed=args.seed,
        output_dir=output / CHECKPOINTS,
        accelerator=accelerator,
        progress=not args.quiet,
        num_workers=args.num_workers,
    )
    if not accelerator.is_main_process:  # the main process saves, pushes and reports
        return
    record = model.config.training  # what train() cannot know: where the rows and the first weights came from
    for key, split in (("dataset", train_split), ("eval_dataset", eval_split)):
        if record[key] is not None:
            record[key].update(
                name_or_path=dataset_name(split, args.dataset), revision=revision, config_name=config_name
            )
    record["initial_weights"]["source"] = (
        f"timm {args.from_timm}, {'pretrained' if args.pretrained else 'random'} weights"
        if args.from_timm
        else f"{args.preset}, random weights (seed {args.seed})"
    )
    with atomic_directory(output, keep=(CHECKPOINTS,)) as staging:  # replaced as a whole, checkpoints kept
        model.save_pretrained(staging)
        parent_card(model).save(Path(staging) / "README.md")
    if args.push_to:
        try:
            _print_pushes({"model": push_directory(output, args.push_to, model=model, private=args.private)})
        except Exception as error:  # the model is saved: say so, and how to push it without training again
            raise RuntimeError(
                f"{message(error)} The trained model is saved in {output}: push it with "
                f"`hf-modular push-parent {output} {args.push_to}`."
            ) from error
    final = history.final
    scores = f", top-1 {100 * final['top1']:.2f}% top-5 {100 * final['top5']:.2f}%" if "top1" in final else ""
    name = args.from_timm or args.preset
    epochs = final.get("epoch")
    summary = f"mean training loss {final.get('loss'):.4f}{scores}"
    print(f"Saved {name} to {args.output} after {epochs} epoch{'s' if epochs != 1 else ''} ({summary})")


def _default(function: Any, parameter: str) -> Any:
    """The API's own default for one of `function`'s parameters, so the CLI never restates it."""
    return inspect.signature(function).parameters[parameter].default


def _add_compute_options(command: argparse.ArgumentParser) -> None:
    """Where and in which precision a command runs models (under `accelerate launch`, on every process)."""
    command.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    command.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        default="no",
        help="Accelerate's autocast: bf16 is several times faster on GPUs and on CPUs with AMX (what train and "
        "decompose write records it)",
    )


def _add_data_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dataset-revision", default=None, help="branch, tag or commit of a Hub dataset")
    command.add_argument("--dataset-config", default=None, metavar="NAME", help="a Hub dataset's configuration")
    command.add_argument(
        "--num-workers", type=cli_number(minimum=0, integer=True), default=0, help="processes that decode images"
    )


def _add_pickle_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a model saved only as a pickle checkpoint (pytorch_model.bin), which can run code: trusted only",
    )


def _add_remote_code_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--remote-code",
        action="store_true",
        help="also publish auto_map and code files that import hf_modular, for from_pretrained(trust_remote_code=True)",
    )


def _add_overwrite_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--overwrite", action="store_true", help="replace what --output already holds (refused without it)"
    )


def _demo_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--output", default="hf-modular-demo", metavar="DIR", help="where to write everything")
    command.add_argument("--seed", type=int, default=_default(run_demo, "seed"), help="(default: %(default)s)")
    command.add_argument("--quick", action="store_true", help="a smaller run, for CI")
    command.add_argument("--json", action="store_true", help="print the summary as JSON")
    command.add_argument("--push-to", default=None, metavar="NAMESPACE", help="also push the ten modules to the Hub")
    _add_overwrite_option(command)
    command.set_defaults(run=_demo)


def _train_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dataset", required=True, help="Hub name, .parquet file, or folder")
    _add_data_options(command)
    command.add_argument("--preset", default="modular_resnet20", help="architecture (see hf_modular.PRESETS)")
    command.add_argument("--from-timm", default=None, metavar="NAME", help="start from a timm ResNet (e.g. resnet18)")
    command.add_argument("--pretrained", action="store_true", help="with --from-timm: load timm's pretrained weights")
    command.add_argument("--push-to", default=None, metavar="REPO_ID", help="push the trained model to the Hub")
    command.add_argument("--private", action="store_true", help="with --push-to: create the repo private")
    command.add_argument("--split", default="train", help="the split to train on")
    command.add_argument("--eval-split", default="test", help="evaluated after every epoch ('' to skip)")
    command.add_argument("--epochs", type=COUNT, default=_default(train, "epochs"), help="passes over the data")
    command.add_argument(
        "--batch-size", type=COUNT, default=_default(train, "batch_size"), help="rows per step (over all processes)"
    )
    command.add_argument(
        "--learning-rate", type=cli_number(above=0), default=_default(train, "learning_rate"), help="at the start"
    )
    command.add_argument("--no-flip", action="store_true", help="no horizontal flips (digits, text)")
    command.add_argument(
        "--seed",
        type=cli_number(minimum=0, integer=True),
        default=_default(train, "seed"),
        help="of the initial weights, the epoch orders and the augmentation",
    )
    command.add_argument(
        "--output", required=True, metavar="DIR", help="the trained model; checkpoints in DIR/training"
    )
    _add_overwrite_option(command)
    _add_compute_options(command)
    command.set_defaults(run=_train)


def _info_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", metavar="PATH_OR_REPO", help="a model, module or composition: directory or repo id")
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    command.add_argument("--json", action="store_true", help="print JSON")
    _add_pickle_option(command)
    command.set_defaults(run=_info)


def _import_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "checkpoint",
        metavar="SOURCE",
        help="a CIFAR checkpoint file (.th/.pt, read with weights_only=True), or a transformers ResNet "
        "(ResNetForImageClassification: directory or Hub repo id, e.g. microsoft/resnet-50)",
    )
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit of a transformers ResNet")
    command.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    _add_overwrite_option(command)
    command.add_argument("--labels", default=None, help="comma-separated class names (default: CIFAR-10's)")
    command.set_defaults(run=_import)


def _decompose_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", metavar="MODEL", help="local directory or Hub repo id of a ModularResNet classifier")
    command.add_argument("--dataset", required=True, help="Hub name, .parquet file, or folder with the training data")
    command.add_argument("--split", default=_default(decompose, "split"), help="split observed by the statistics pass")
    _add_data_options(command)
    command.add_argument("--eval-split", default=None, help="split to measure modules and composition on (e.g. test)")
    command.add_argument("--eval-limit", type=COUNT, default=None, help="measure on the first N rows of the eval split")
    command.add_argument("--classes", default=None, help="comma-separated labels (default: every class)")
    command.add_argument(
        "--samples-per-class", type=COUNT, default=_default(decompose, "samples_per_class"), help="own-class inputs"
    )
    command.add_argument(
        "--negatives-ratio",
        type=cli_number(minimum=0),
        default=_default(decompose, "negatives_ratio"),
        help="negatives per own input",
    )
    command.add_argument(
        "--strategy",
        default="activation",
        choices=list(STRATEGIES),
        help="activation: the paper's masked full-size modules; channel: compact, physically pruned modules",
    )
    _add_strategy_options(command.add_argument_group("strategy options (each names the strategies that take it)"))
    command.add_argument("--batch-size", type=COUNT, default=_default(decompose, "batch_size"), help="images per step")
    command.add_argument("--seed", type=int, default=_default(decompose, "seed"), help="seed of sampling and recovery")
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    _add_compute_options(command)
    command.add_argument("--output", required=True, metavar="DIR", help="directory for the module directories")
    _add_overwrite_option(command)
    command.add_argument("--push-to", default=None, metavar="NAMESPACE", help="push every module to this Hub namespace")
    command.add_argument("--name-template", default=DEFAULT_NAME_TEMPLATE, help="repo name of each module")
    command.add_argument("--private", action="store_true", help="create the module repos private")
    _add_pickle_option(command)
    command.set_defaults(run=_decompose)


def _push_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("directory", metavar="DIR", help="a decomposition's output (its *-module directories)")
    command.add_argument("--namespace", required=True, help="Hub user or organisation")
    command.add_argument("--name-template", default=DEFAULT_NAME_TEMPLATE, help="repo name of each module")
    command.add_argument("--private", action="store_true", help="create the repos private")
    command.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    command.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    command.add_argument("--license", default=None, help="license id for the cards (the parent's license)")
    _add_remote_code_option(command)
    command.set_defaults(run=_push)


def _push_parent_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("directory", metavar="DIR", help="the parent model's directory")
    command.add_argument("repo_id", metavar="REPO_ID", help="namespace/name")
    command.add_argument("--private", action="store_true", help="create the repo private")
    command.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    command.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    command.add_argument("--license", default=None, help="license id for the card")
    _add_remote_code_option(command)
    command.set_defaults(run=_push_parent)


def _card_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("directory", metavar="DIR", help="a module's, parent's or composition's directory")
    command.add_argument("--repo-id", default=None, help="the Hub repo the card's snippets should name")
    command.add_argument("--license", default=None, help="license id for the card")
    command.set_defaults(run=_card)


def _compose_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "modules", nargs="+", metavar="MODULE", help="module directories or Hub repo ids (@revision to pin one)"
    )
    command.add_argument("--output", required=True, metavar="DIR", help="the composed model's directory")
    _add_overwrite_option(command)
    command.add_argument(
        "--rename",
        nargs="*",
        action="extend",
        metavar="OLD=NEW",
        help="rename modules' classes (after the modules; several pairs, or the option again, or comma-separated)",
    )
    command.add_argument(
        "--labels",
        default=None,
        metavar="A,B,...",
        help="every module's label, in order (two modules of one class can answer as two labels)",
    )
    command.add_argument("--materialize", action="store_true", help="store the modules' weights in DIR (offline use)")
    command.add_argument("--push-to", default=None, metavar="REPO_ID", help="also publish the composition on the Hub")
    command.add_argument("--private", action="store_true", help="with --push-to: create the repo private")
    _add_calibrate_options(command)
    _add_fit_options(command)
    command.set_defaults(run=_compose)


def _add_calibrate_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--calibrate",
        default=None,
        metavar="DATASET",
        help="fit each module's own-class probability on this labelled dataset and answer by plain argmax over the "
        "calibrated probabilities instead of the paper's vote (use held-out images)",
    )
    command.add_argument("--calibrate-split", default="train", metavar="SPLIT", help="of --calibrate (default: train)")


def _add_fit_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--fit",
        default=None,
        metavar="DATASET",
        help="refit each module's own-vs-rest head on labelled images of the composition's classes (other classes "
        "in DATASET are skipped), so modules from unrelated parents compose (use held-out images)",
    )
    split = _default(ComposedModel.fit, "split")
    command.add_argument("--fit-split", default=split, metavar="SPLIT", help=f"of --fit (default: {split})")
    command.add_argument(
        "--images-per-class",
        type=cli_number(minimum=2, integer=True),
        default=_default(ComposedModel.fit, "images_per_class"),
        help="for --fit (default: %(default)s)",
    )


def _replace_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("composed", metavar="COMPOSED", help="a composed model's directory")
    command.add_argument("label", metavar="LABEL", help="the label whose module is swapped")
    command.add_argument("module", metavar="MODULE", help="the new module (directory or repo id, @revision to pin)")
    command.add_argument("--output", default=None, metavar="DIR", help="where to save (default: in place)")
    _add_overwrite_option(command)
    command.add_argument(
        "--materialize",
        action="store_true",
        help="store the modules' weights in the directory (kept when the composition already does)",
    )
    command.add_argument(
        "--relabel", action="store_true", help="let a module of another class name answer as LABEL (the same class)"
    )
    _add_fit_options(command)
    _add_calibrate_options(command)
    command.add_argument(
        "--drop-fit",
        action="store_true",
        help="a fitted or calibrated composition: answer with the modules' own heads by the paper's vote from now on",
    )
    command.set_defaults(run=_replace)


def _evaluate_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "model", metavar="PATH_OR_REPO", help="a classifier, a module or a composition: directory or Hub repo id"
    )
    command.add_argument("--dataset", required=True, help="Hub name, .parquet file, or folder")
    _add_data_options(command)
    command.add_argument("--split", default="test", help="(default: %(default)s)")
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    command.add_argument("--image-column", default=None, help="default: the dataset's Image column")
    command.add_argument("--label-column", default=None, help="default: the dataset's ClassLabel column")
    command.add_argument(
        "--batch-size", type=COUNT, default=_default(evaluate, "batch_size"), help="(default: %(default)s)"
    )
    command.add_argument("--limit", type=COUNT, default=None, help="evaluate only the first N rows")
    command.add_argument("--json", action="store_true", help="print JSON")
    _add_compute_options(command)
    _add_pickle_option(command)
    command.set_defaults(run=_evaluate)


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "demo": _demo_arguments,
    "train": _train_arguments,
    "info": _info_arguments,
    "import": _import_arguments,
    "decompose": _decompose_arguments,
    "push": _push_arguments,
    "push-parent": _push_parent_arguments,
    "card": _card_arguments,
    "compose": _compose_arguments,
    "replace": _replace_arguments,
    "evaluate": _evaluate_arguments,
}


HUB_TIMEOUT_VARIABLE = "HF_MODULAR_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 120.0  # seconds without a byte from the Hub; a large commit is answered well within it


def hub_timeout() -> float:
    value = os.environ.get(HUB_TIMEOUT_VARIABLE, "")
    try:
        return float(value) if value else DEFAULT_HUB_TIMEOUT
    except ValueError:
        raise ValueError(f"{HUB_TIMEOUT_VARIABLE}={value!r} is not a number of seconds.") from None


def _is_http_timeout(error: BaseException | None) -> bool:
    """Whether `error`, or what caused it, is a timeout of the HTTP client the Hub client uses (httpx's classes)."""
    while error is not None:
        kind = type(error)
        if kind.__module__.split(".")[0].startswith(("httpx", "httpcore")) and "Timeout" in kind.__name__:
            return True
        error = error.__cause__ or error.__context__
    return False


def limit_hub_requests(seconds: float) -> None:
    """Give every request of huggingface_hub's client (transformers, timm and datasets download through it) a time
    limit. Its requests carry no timeout (`timeout=None` per request, which overrides a client's default), so a
    server that accepts the connection and never answers would hang a command forever. The client factory keeps
    huggingface_hub's own hooks (offline mode, request ids) and adds one that fills the limit in where a request
    has none; a factory, because the client is rebuilt after a failed request."""

    def limit(request) -> None:
        given = request.extensions.get("timeout") or {}
        phases = ("connect", "read", "write", "pool")
        request.extensions["timeout"] = {key: seconds if given.get(key) is None else given[key] for key in phases}

    template = huggingface_hub.get_session()
    hooks = {kind: [f for f in functions if f.__name__ != "limit"] for kind, functions in template.event_hooks.items()}
    client_class = type(template)  # (a limit set by an earlier call in this process is replaced, not stacked)

    def client():
        request_hooks = [*hooks.get("request", []), limit]
        return client_class(event_hooks={**hooks, "request": request_hooks}, follow_redirects=True, timeout=seconds)

    huggingface_hub.set_client_factory(client)


def interruption_hint(args: argparse.Namespace) -> str:
    """What a command stopped by Ctrl-C has kept, and how to go on."""
    if args.command == "train":
        if (Path(args.output) / CHECKPOINTS / STATE_FILE).is_file():
            return " Rerun the same command to resume from the last completed epoch."
        return " No epoch had finished, so nothing was saved."
    if args.command == "decompose":
        return " Rerun the same command to resume: the modules it finished writing are kept."
    return ""


def message(error: Exception) -> str:
    """The one line the CLI prints for an error."""
    if _is_http_timeout(error):
        return (
            f"the Hub ({huggingface_hub.constants.ENDPOINT}) did not answer within {hub_timeout():g} s. Check the "
            f"connection, or allow more time with {HUB_TIMEOUT_VARIABLE}=<seconds>."
        )
    if isinstance(error, StrictDataclassClassValidationError) and error.__cause__ is not None:
        return str(error.__cause__)  # the config's own message, without the validator's header line
    return without_url_queries(str(error))  # the Hub client's messages quote URLs, and an upload URL's query signs it


def run(args: argparse.Namespace) -> None:
    """Run the parsed command: the chosen loudness, a time limit on every Hub request, then the command itself."""
    console.configure(console.QUIET if args.quiet else console.VERBOSE if args.verbose else console.DEFAULT)
    limit_hub_requests(hub_timeout())
    args.run(args)
