"""`compose`, `replace` and `fit`: classifiers built from modules, and their fitted heads.

Under `accelerate launch` the processes share a fit's images; the main process alone saves, pushes and prints."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..compose import ComposedModel
from ..data import dataset_name
from ..distributed import distributed_state
from ..saving import atomic_directory, check_overwrite
from ..validation import cli_number
from .hub import print_pushes, refuse_a_model_push_now
from .loading import model_source
from .options import add_column_options, add_dataset_version_options, add_overwrite_option, default_of

FIT_IMAGES_PER_CLASS = default_of(ComposedModel.fit, "images_per_class")
CALIBRATION_IMAGES = default_of(ComposedModel.calibrate, "max_images")
CALIBRATION_SPLIT = default_of(ComposedModel.calibrate, "split")


def run_compose(args: argparse.Namespace) -> None:
    _refuse_fit_and_calibrate(args)
    _refuse_dataset_version_without_data(args)
    pairs = [pair.strip() for given in args.rename or [] for pair in given.split(",")]
    malformed = [pair for pair in pairs if "=" not in pair]
    if malformed:
        raise ValueError(f"--rename takes OLD=NEW pairs; got {malformed}.")
    rename = dict(pair.split("=", 1) for pair in pairs) or None
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    _refuse_an_output_over_a_member(args.output, args.modules)
    check_overwrite(args.output, args.overwrite)
    if args.push_to:
        refuse_a_model_push_now(args.push_to, distributed_state())
    composed = ComposedModel.from_modules([model_source(m) for m in args.modules], rename=rename, labels=labels)
    if args.calibrate:
        _calibrate(composed, args.calibrate, args.calibrate_split, args)
    if args.fit:
        _fit(composed, args.fit, args)
    if not distributed_state().is_main_process:
        return
    with atomic_directory(args.output, keep=()) as staging:
        composed.save_pretrained(staging, materialize=args.materialize)
    print(f"Composed {len(composed.labels)} modules ({', '.join(composed.labels)}) into {args.output}")
    if args.push_to:
        pushed = composed.push_to_hub(args.push_to, materialize=args.materialize, private=args.private)
        print_pushes({"composed": pushed})


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


def _fit(composed: ComposedModel, dataset: str, args: argparse.Namespace) -> None:
    """Fit the heads on `dataset` with the images per class given, or else those of the composition's last fit (so
    fitting again after a change repeats the same fit), or else the API's default; the same for the split, columns,
    and a Hub dataset's commit and configuration, when `dataset` is the last fit's."""
    state, last, same_data = distributed_state(), _last_fit(composed), _last_fit(composed, dataset)
    record = composed.fit(  # a full dataset is the usual input here: the composition's classes are picked
        dataset,
        split=args.fit_split or same_data.get("split") or default_of(ComposedModel.fit, "split"),
        images_per_class=args.images_per_class or last.get("images_per_class") or FIT_IMAGES_PER_CLASS,
        seed=last.get("seed", default_of(ComposedModel.fit, "seed")),
        other_classes="skip",
        state=state,
        progress=not args.quiet,
        image_column=args.image_column or same_data.get("image_column"),
        label_column=args.label_column or same_data.get("label_column"),
        **_dataset_version(args, same_data),
    )
    if not state.is_main_process:
        return
    data = record["data"]
    print(
        f"Fitted each module's head on {data['images']} images ({data['images_per_class']} per class, split "
        f"{data['split']}) in {record['seconds']:.1f} s"
    )


def _last_fit(composed: ComposedModel, dataset: str | None = None) -> dict:
    """The data record of the composition's last fit ({} when there was none, or when `dataset` is not its data)."""
    last = (composed.config.fit or {}).get("data", {})
    if dataset is not None and dataset_name(None, dataset) != last.get("name_or_path"):
        return {}
    return last


def _dataset_version(args: argparse.Namespace, last: dict) -> dict[str, str | None]:
    """The Hub dataset's revision and configuration given, or else those the last fit on the same data read."""
    return {
        "dataset_revision": args.dataset_revision or last.get("revision"),
        "dataset_config": args.dataset_config or last.get("config_name"),
    }


def _calibrate(
    composed: ComposedModel, dataset: str, split: str, args: argparse.Namespace, last: dict | None = None
) -> None:
    """Calibrate on `dataset`; `last`, the data record of a fit on the same data, gives its commit and columns."""
    last = last or {}
    calibration = composed.calibrate(
        dataset,
        split=split,
        progress=not args.quiet,
        image_column=args.image_column or last.get("image_column"),
        label_column=args.label_column or last.get("label_column"),
        **_dataset_version(args, last),
    )
    if not distributed_state().is_main_process:
        return
    print("Calibrated (scale, bias): " + ", ".join(f"{k} {a:.3g} {b:+.3g}" for k, (a, b) in calibration.items()))


def _save(composed: ComposedModel, source: str, output: str | None, materialize: bool | None = None) -> str:
    """Save a changed composition in place (files the user added there stay) or to `output`, a directory that is
    replaced as a whole. Returns where it went."""
    if output is None or Path(output).resolve() == Path(source).resolve():
        composed.save_pretrained(source, materialize=materialize)
        return source
    with atomic_directory(output, keep=()) as staging:
        composed.save_pretrained(staging, materialize=materialize)
    return output


def _last_fit_dataset(composed: ComposedModel, name: str) -> str:
    """The dataset of the composition's last fit, when its record names one that can be loaded again."""
    recorded = _last_fit(composed).get("name_or_path")
    if not composed.config.fit:
        raise ValueError(f"{name} has not been fitted: give the labelled images to fit it on with --dataset DATA.")
    if recorded is None:
        raise ValueError(f"{name} was fitted on an in-memory dataset: give the images to fit on with --dataset DATA.")
    if recorded.startswith("./"):  # provenance names local data by its base name only (see data.dataset_name)
        raise ValueError(
            f"{name} was fitted on local data, {recorded}, and only its file name is recorded: give its path with "
            "--dataset PATH."
        )
    return recorded


def _refuse_an_output_over_its_members(
    composed: ComposedModel, args: argparse.Namespace, new_members: tuple[str, ...] = ()
) -> None:
    """Before any work: an --output other than the composition itself must not be, hold or sit inside a member."""
    if args.output is None or Path(args.output).resolve() == Path(args.composed).resolve():
        return
    others = [entry["source"] for entry in composed.config.members if entry.get("source")]
    _refuse_an_output_over_a_member(args.output, [*others, *new_members])


def _refuse_to_leave_a_stale_fit(composed: ComposedModel, args: argparse.Namespace) -> None:
    """A fitted or calibrated composition's fit does not cover a new module: replace fits again or drops it."""
    config, refit = composed.config, args.fit or args.calibrate or args.drop_fit
    if config.fit and not refit:
        data = config.fit["data"]
        raise ValueError(
            f"{args.composed} was fitted (on {data['images']} images of {data['name_or_path'] or 'a dataset'}), and "
            "the fitted heads would not cover the new module; nothing was written. Add --fit DATA to fit it again, "
            "--calibrate DATA to calibrate the modules' own heads instead, or --drop-fit to answer with them by the "
            "paper's vote."
        )
    if config.rule == "calibrated" and not refit:
        raise ValueError(
            f"{args.composed} is calibrated, and its calibration would not cover the new module; nothing was "
            "written. Add --calibrate DATA [--calibrate-split SPLIT] to calibrate it again, or --drop-fit to answer "
            "by the paper's vote."
        )


def _refuse_fit_and_calibrate(args: argparse.Namespace) -> None:
    if args.fit and args.calibrate:
        raise ValueError(
            "--fit and --calibrate are two ways to make modules of different parents agree (a fit's heads are "
            "calibrated already): give one."
        )


def run_replace(args: argparse.Namespace) -> None:
    _refuse_fit_and_calibrate(args)
    _refuse_dataset_version_without_data(args)
    if (args.fit or args.calibrate) and args.drop_fit:
        raise ValueError("--fit and --calibrate fit the composition again and --drop-fit drops its fit: give one.")
    _check_where_it_is_saved(args)
    composed = ComposedModel.from_pretrained(model_source(args.composed))
    _refuse_to_leave_a_stale_fit(composed, args)
    _refuse_an_output_over_its_members(composed, args, new_members=(args.module,))
    materialize = args.materialize or composed.stores_its_modules  # it goes on storing them, the new one included
    composed.replace(args.label, model_source(args.module), relabel=args.relabel)
    if args.drop_fit:
        composed.drop_fit()
    if args.fit:
        _fit(composed, args.fit, args)
    if args.calibrate:
        _calibrate(composed, args.calibrate, args.calibrate_split, args, _last_fit(composed, args.calibrate))
    if not distributed_state().is_main_process:
        return
    output = _save(composed, args.composed, args.output, materialize)
    inside = " (modules stored inside)" if materialize else ""
    print(f"Replaced the {args.label!r} module; saved to {output}{inside}")


def run_fit(args: argparse.Namespace) -> None:
    if args.calibrate and args.images_per_class is not None:
        raise ValueError(
            f"--calibrate uses every image of --split (at most {CALIBRATION_IMAGES:,}); --images-per-class is for fits."
        )
    data_options = (args.dataset, args.fit_split, args.images_per_class, args.dataset_revision, args.dataset_config)
    if args.drop and (args.calibrate or any(data_options)):
        raise ValueError("--drop drops the fit and fits nothing: it takes no data options.")
    _check_where_it_is_saved(args)
    composed = ComposedModel.from_pretrained(model_source(args.composed))
    _refuse_an_output_over_its_members(composed, args)
    if args.drop:
        composed.drop_fit()
        if distributed_state().is_main_process:
            print(f"Dropped the fit; saved to {_save(composed, args.composed, args.output)}")
        return
    dataset = args.dataset or _last_fit_dataset(composed, args.composed)
    if args.calibrate:  # of the modules' own heads: a fit's heads are calibrated by construction
        same_data = _last_fit(composed, dataset)
        split = args.fit_split or same_data.get("split") or CALIBRATION_SPLIT
        if composed.config.fit and distributed_state().is_main_process:
            print("Its fit is dropped: calibration is of the modules' own heads (fitted heads are calibrated already).")
        _calibrate(composed, dataset, split, args, same_data)
    else:
        _fit(composed, dataset, args)
    if not distributed_state().is_main_process:
        return
    output = _save(composed, args.composed, args.output)
    print(f"Saved to {output}")


def _check_where_it_is_saved(args: argparse.Namespace) -> None:
    """A changed composition is saved in place, which needs a local directory, or to a free --output."""
    in_place = args.output is None or Path(args.output).resolve() == Path(args.composed).resolve()
    if in_place and not Path(args.composed).is_dir():
        raise ValueError(
            f"{args.composed} is not a local directory, so it cannot be changed in place: give --output DIR to save "
            "the changed composition there."
        )
    if not in_place:
        check_overwrite(args.output, args.overwrite)


def add_compose_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "modules",
        nargs="+",
        metavar="MODULE",
        help="module directories or Hub repo ids (@revision to pin one); a decomposition's output directory gives "
        "all its modules",
    )
    command.add_argument("--output", required=True, metavar="DIR", help="the composed model's directory")
    add_overwrite_option(command)
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
    add_dataset_version_options(command, "--fit or --calibrate", after_a_fit=False)
    add_column_options(command)
    command.set_defaults(run=run_compose)


def _add_calibrate_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--calibrate",
        default=None,
        metavar="DATASET",
        help="fit each module's own-class probability on this labelled dataset and answer by plain argmax over the "
        "calibrated probabilities instead of the paper's vote (use held-out images)",
    )
    command.add_argument(
        "--calibrate-split",
        default=CALIBRATION_SPLIT,
        metavar="SPLIT",
        help=f"of --calibrate (default: {CALIBRATION_SPLIT})",
    )


def _refuse_dataset_version_without_data(args: argparse.Namespace) -> None:
    if (args.dataset_revision or args.dataset_config) and not (args.fit or args.calibrate):
        raise ValueError("--dataset-revision and --dataset-config choose the data of --fit or --calibrate: give one.")


def _add_fit_settings(command: argparse.ArgumentParser, dataset_option: str, split_flag: str) -> None:
    """The split and images per class to fit on; left out, they are the composition's last fit's, else the API's."""
    split = default_of(ComposedModel.fit, "split")
    command.add_argument(
        split_flag,
        dest="fit_split",
        default=None,
        metavar="SPLIT",
        help=f"the split of {dataset_option} (default: the last fit's on the same data, else {split})",
    )
    command.add_argument(
        "--images-per-class",
        type=cli_number(minimum=2, integer=True),
        default=None,
        help=f"images of each class to fit on (default: the last fit's, else {FIT_IMAGES_PER_CLASS})",
    )


def _add_fit_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--fit",
        default=None,
        metavar="DATASET",
        help="refit each module's own-vs-rest head on labelled images of the composition's classes (other classes "
        "in DATASET are skipped), so modules from unrelated parents compose (use held-out images)",
    )
    _add_fit_settings(command, "--fit", "--fit-split")


def add_replace_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "composed", metavar="COMPOSED", help="a composed model's directory (a Hub repo id with --output DIR)"
    )
    command.add_argument("label", metavar="LABEL", help="the label whose module is swapped")
    command.add_argument("module", metavar="MODULE", help="the new module (directory or repo id, @revision to pin)")
    command.add_argument("--output", default=None, metavar="DIR", help="where to save (default: in place)")
    add_overwrite_option(command)
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
    add_dataset_version_options(command, "--fit or --calibrate")
    add_column_options(command)
    command.add_argument(
        "--drop-fit",
        action="store_true",
        help="a fitted or calibrated composition: answer with the modules' own heads by the paper's vote from now on",
    )
    command.set_defaults(run=run_replace)


def add_fit_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "composed", metavar="COMPOSED", help="a composed model's directory (a Hub repo id with --output DIR)"
    )
    command.add_argument(
        "--dataset",
        default=None,
        metavar="DATASET",
        help="labelled images of the composition's classes, other classes skipped (default: the last fit's dataset)",
    )
    _add_fit_settings(command, "--dataset", "--split")
    add_dataset_version_options(command, "--dataset")
    add_column_options(command)
    command.add_argument(
        "--calibrate",
        action="store_true",
        help="Platt-calibrate the modules' own heads instead (rule 'calibrated'; every image of --split, at most "
        f"{CALIBRATION_IMAGES:,})",
    )
    command.add_argument(
        "--drop",
        action="store_true",
        help="drop the fit or calibration instead: answer with the modules' own heads by the paper's vote",
    )
    command.add_argument("--output", default=None, metavar="DIR", help="where to save (default: in place)")
    add_overwrite_option(command)
    command.set_defaults(run=run_fit)
