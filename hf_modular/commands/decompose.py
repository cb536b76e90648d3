"""`decompose`: one module per class, with one flag per option of every registered strategy."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from pathlib import Path
from typing import Any

from ..data import pinned_revision
from ..decompose import STRATEGIES, decompose, decompose_to_directory, planned_modules
from ..distributed import distributed_state, on_main_process
from ..hub import (
    DEFAULT_NAME_TEMPLATE,
    RepoHoldsAnotherModel,
    check_module_pushes,
    check_write_access,
    push_modules,
)
from ..models import ModularResNetConfig, ModularResNetForImageClassification
from ..module import describe
from ..validation import cli_number
from .hub import check_before_work, print_pushes
from .loading import load_classifier
from .options import (
    COUNT,
    add_column_options,
    add_compute_options,
    add_data_options,
    add_overwrite_option,
    add_pickle_option,
    default_of,
)


def run_decompose(args: argparse.Namespace) -> None:
    if args.eval_limit and not args.eval_split:
        raise ValueError("--eval-limit limits the evaluation, which needs --eval-split (e.g. --eval-split test).")
    state = distributed_state(cpu=args.cpu, mixed_precision=args.mixed_precision)
    classes = [name.strip() for name in args.classes.split(",")] if args.classes is not None else None
    options = {
        "classes": classes,
        "samples_per_class": args.samples_per_class,
        "negatives_ratio": args.negatives_ratio,
        "split": args.split,
        "dataset_revision": args.dataset_revision,
        "dataset_config": args.dataset_config,
        "image_column": args.image_column,
        "label_column": args.label_column,
        "num_workers": args.num_workers,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "strategy": args.strategy,
        **_strategy_options(args),
    }
    model = load_classifier(args)
    if args.push_to:  # a repo that holds another module is found now, not after the decomposition
        # One commit of a Hub dataset, for the check and the decomposition alike (its branch may move meanwhile).
        options["dataset_revision"] = on_main_process(
            lambda: pinned_revision(args.dataset, args.dataset_revision), state
        )
        check_before_work(lambda: _check_pushes(model, args, options), state)
    report = decompose_to_directory(
        model,
        args.dataset,
        args.output,
        eval_dataset=args.dataset if args.eval_split else None,
        eval_split=args.eval_split or "test",
        eval_limit=args.eval_limit,
        accelerator=state,
        progress=not args.quiet,
        overwrite=args.overwrite,
        **options,
    )
    if not state.is_main_process:
        return
    if args.push_to:
        try:  # checked before the decomposition; a repo may have changed since
            pushed = push_modules(args.output, args.push_to, name_template=args.name_template, private=args.private)
        except RepoHoldsAnotherModel as error:
            raise _refusal(error, args, decomposed=True) from None
        print_pushes(pushed)
    modules = {
        label: ModularResNetConfig.from_pretrained(Path(args.output) / row["directory"]).provenance
        for label, row in report["modules"].items()
    }
    strategy = STRATEGIES[args.strategy]
    headline_format = strategy.headline_format or f"mean {strategy.headline.replace('_', ' ')} {{:.3f}}"
    headline = headline_format.format(report[f"mean_{strategy.headline}"])
    print(f"{len(modules)} modules in {args.output}  ({headline})")
    evaluation = report.get("evaluation")
    if evaluation:
        parent, composed = evaluation["parent"], evaluation["composed"]
        subset = evaluation.get("classes")
        # Of a subset, the parent chooses among all its classes, and again among the subset's only (a report of an
        # earlier release has the first only).
        rows = {"parent (all its classes)" if subset else "parent": parent}
        if evaluation.get("parent_among_classes"):
            rows["parent (these classes)"] = evaluation["parent_among_classes"]
        rows["composed"] = composed
        of = f" of {', '.join(subset)}" if subset else ""
        print(f"on {args.eval_split} ({evaluation['images']} images{of}):")
        width = max(map(len, rows))
        for name, figures in rows.items():
            print(f"  {name:<{width}}  top-1 {100 * figures['top1']:6.2f}%  top-5 {100 * figures['top5']:6.2f}%")
    measures = {label: describe(info).measures for label, info in modules.items()}
    columns = list(next(iter(measures.values())))
    print(f"{'module':<20} " + " ".join(f"{column:>8}" for column in columns) + f" {'binary acc':>10}")
    for label, row in report["modules"].items():
        binary = f"{100 * row['binary_accuracy']:9.2f}%" if "binary_accuracy" in row else "         -"
        print(f"{label:<20} " + " ".join(f"{measures[label][column]:>8}" for column in columns) + f" {binary}")


def _check_pushes(model: ModularResNetForImageClassification, args: argparse.Namespace, options: dict) -> None:
    """`push_modules`' checks, on the modules this decomposition will build."""
    check_write_access(args.push_to)
    planned = planned_modules(model, args.dataset, **options)
    try:
        check_module_pushes(planned, args.push_to, name_template=args.name_template)
    except RepoHoldsAnotherModel as error:
        raise _refusal(error, args, decomposed=False) from None


def _refusal(error: RepoHoldsAnotherModel, args: argparse.Namespace, *, decomposed: bool) -> FileExistsError:
    """`decompose --push-to`'s words for a repo that holds another model: the ways out of this command."""
    elsewhere = "Push under other repo names (--name-template; {strategy} is a field) or to another namespace."
    saved = f"The modules are saved in {args.output}." if decomposed else "Nothing was decomposed."
    if error.holds == "model":  # a parent or a composition: never to be replaced by a module
        return FileExistsError(
            f"{error.repo_id} holds a model that is not a class module (a parent or a composition), where this "
            f"decomposition would push a module.{error.others()} {saved} {elsewhere}"
        )
    push = ["hf-modular", "push", args.output, "--namespace", args.push_to, "--overwrite"]
    if args.name_template != DEFAULT_NAME_TEMPLATE:
        push += ["--name-template", args.name_template]
    push += ["--private"] if args.private else []
    replace = (
        f"run `{shlex.join(push)}`"
        if decomposed
        else f"decompose without --push-to (and with --overwrite, should {args.output} hold another run's modules), "
        f"then run `{shlex.join(push)}`"
    )
    if error.holds == "files":  # another library's weights, say
        held = f"{error.differences[0]}, where this decomposition would push a module"
        to = "To push the modules there all the same (its files stay beside them)"
    else:
        held = f"another module than this decomposition pushes there: {'; '.join(error.differences)}"
        to = "To replace the published modules"
    return FileExistsError(
        f"{error.repo_id} holds {held}.{error.others()} {saved} {to}, {replace}. "
        f"Or: {elsewhere[0].lower()}{elsewhere[1:]}"
    )


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
        _, option, annotation = owners[0]  # registration made sure they share a type and a default
        kind = _flag_type(annotation)
        helps: dict[str, list[str]] = {}  # one help text, with the strategies that give it
        for owner, field, _ in owners:
            helps.setdefault(field.metadata.get("help", ""), []).append(owner)
        help_text = "; ".join(f"{', '.join(names)}: {text}" for text, names in helps.items())
        if option.default is not None:  # None's meaning is in the help itself
            help_text += f" (default: {option.default})"
        flag = "--" + name.replace("_", "-")
        try:
            if kind is bool:
                parser.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
                )
            else:
                parser.add_argument(
                    flag, type=kind, choices=option.metadata.get("choices"), default=argparse.SUPPRESS, help=help_text
                )
        except argparse.ArgumentError as error:  # a strategy of the user's, with a name the command has
            owners_named = ", ".join(owner for owner, _, _ in owners)
            raise ValueError(
                f"The option {name!r} of the {owners_named} strategy is a flag of `hf-modular decompose` itself "
                f"({flag}): rename the option."
            ) from error


def _flag_type(annotation: Any) -> type:
    """The command-line type of an option annotated `int`, `float`, `bool`, `str` or `str | None`."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    return arguments[0] if arguments else annotation


def add_decompose_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", metavar="MODEL", help="local directory or Hub repo id of a ModularResNet classifier")
    command.add_argument("--dataset", required=True, help="Hub name, .parquet file, or folder with the training data")
    command.add_argument(
        "--split", default=default_of(decompose, "split"), help="split observed by the statistics pass"
    )
    add_data_options(command)
    add_column_options(command)
    command.add_argument("--eval-split", default=None, help="split to measure modules and composition on (e.g. test)")
    command.add_argument(
        "--eval-limit", type=COUNT, default=None, help="measure on the first N images of the eval split (of --classes)"
    )
    command.add_argument("--classes", default=None, help="comma-separated labels (default: every class)")
    command.add_argument(
        "--samples-per-class", type=COUNT, default=default_of(decompose, "samples_per_class"), help="own-class inputs"
    )
    command.add_argument(
        "--negatives-ratio",
        type=cli_number(minimum=0),
        default=default_of(decompose, "negatives_ratio"),
        help="negatives per own input",
    )
    command.add_argument(
        "--strategy",
        default="activation",
        choices=list(STRATEGIES),
        help="activation: the paper's masked full-size modules; channel: compact, physically pruned modules",
    )
    command.add_argument(
        "--batch-size", type=COUNT, default=default_of(decompose, "batch_size"), help="images per step"
    )
    command.add_argument(
        "--seed", type=int, default=default_of(decompose, "seed"), help="seed of sampling and recovery"
    )
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    add_compute_options(command)
    command.add_argument("--output", required=True, metavar="DIR", help="directory for the module directories")
    add_overwrite_option(command)
    command.add_argument("--push-to", default=None, metavar="NAMESPACE", help="push every module to this Hub namespace")
    command.add_argument("--name-template", default=DEFAULT_NAME_TEMPLATE, help="repo name of each module")
    command.add_argument("--private", action="store_true", help="create the module repos private")
    add_pickle_option(command)
    # Last: a flag the command has already is a strategy option's name clash, said as such.
    _add_strategy_options(command.add_argument_group("strategy options (each names the strategies that take it)"))
    command.set_defaults(run=run_decompose)
