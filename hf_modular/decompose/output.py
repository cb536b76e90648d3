"""Decompose into a directory: one complete module directory per class, a `decomposition.json` report, and resume.

    out/
      cat-module/            config.json, model.safetensors (weights + masks), preprocessor_config.json
      dog-module/
      decomposition.json     per-module binary accuracy, masked fraction, Jaccard; composed vs parent; timings

Each module directory is written atomically as soon as the module is built, so an interrupted run keeps the modules
it finished, and only complete ones. Running again with the same output skips the classes whose module was built
from the same parent with the same parameters, builds the others (the statistics pass again, for those classes
only: its sample plan gives a class the same rows whichever others are planned) and writes the report.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list

from ..console import library_bars_off
from ..data import (
    dataset_fingerprint,
    dataset_name,
    dataset_split,
    dataset_to_model_labels,
    find_columns,
    find_label_column,
    label_ids,
    label_names,
    load_image_dataset,
    pinned_revision,
    rows_of_classes,
)
from ..distributed import device_and_dtype, distributed_state, mixed_precision_of, on_main_process
from ..evaluation import evaluate_composition
from ..hub import module_card
from ..models import ModularResNetConfig, ModularResNetForImageClassification
from ..module import REPORT_NAME, check_directory_names, describe, module_directory_name, weights_sha256
from ..saving import atomic_directory, locked_directory
from ..validation import check_number
from .pipeline import (
    decompose,
    refuse_a_module,
    resolve_classes,
)
from .strategies import STRATEGIES, strategy_among

logger = logging.getLogger(__name__)


def decompose_to_directory(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset | str | os.PathLike,
    output: str | os.PathLike,
    *,
    eval_dataset: datasets.Dataset | str | os.PathLike | None = None,
    eval_split: str = "test",
    eval_limit: int | None = None,
    classes: list[str] | None = None,
    accelerator: Accelerator | PartialState | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Decompose `model` into `output` (see the module docstring) and return the report that was written.

    `options` are `decompose`'s keyword arguments. With `eval_dataset` (a Dataset, or a name or path loaded with
    `eval_split`; its images of the classes decomposed, the first `eval_limit` of them when given), the report has
    each module's binary accuracy and the composition's top-1/top-5 next to the parent's on it; they are also
    written into each module's config (`module.evaluation`) and model card; a rerun without one keeps the earlier
    run's measurements.

    `output` is held by one run at a time. Modules it already holds from another decomposition (another parent,
    other parameters, classes not asked for now) are an error, unless `overwrite=True`: then this run's modules
    replace them, and the directory ends up holding only this run's.
    """
    if eval_limit is not None:
        check_number("eval_limit", eval_limit, minimum=1, integer=True)
    refuse_a_module(model)  # before its two labels read as classes to decompose
    state = distributed_state(accelerator)
    output = Path(output)
    wanted = [model.config.id2label[i] for i in resolve_classes(classes, model.config.id2label)]
    check_directory_names(wanted)
    with contextlib.ExitStack() as held:
        refusal = None
        if state.is_main_process:  # one process writes and holds the output; all of them stop if it cannot
            try:
                check_writable(output)  # found before the statistics pass, not after it
                held.enter_context(locked_directory(output))
            except (OSError, RuntimeError) as error:
                refusal = error
        if state.num_processes > 1:
            refusal = broadcast_object_list([refusal])[0]
        if refusal:
            raise refusal
        return _write_decomposition(
            model,
            dataset,
            output,
            wanted=wanted,
            eval_dataset=eval_dataset,
            eval_split=eval_split,
            eval_limit=eval_limit,
            state=state,
            progress=progress,
            overwrite=overwrite,
            options=options,
        )


def _write_decomposition(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset | str | os.PathLike,
    output: Path,
    *,
    wanted: list[str],
    eval_dataset: datasets.Dataset | str | os.PathLike | None,
    eval_split: str,
    eval_limit: int | None,
    state: PartialState,
    progress: bool,
    overwrite: bool,
    options: dict[str, Any],
) -> dict[str, Any]:
    """`decompose_to_directory`'s work, once `output` is held by this run: decide what to resume, build and save
    the rest, describe every module, measure them when there is evaluation data, write the cards and the report."""
    started = time.perf_counter()
    revision = options.get("dataset_revision")
    options["dataset_revision"] = on_main_process(lambda: pinned_revision(dataset, revision), state)
    eval_source = eval_dataset if isinstance(eval_dataset, (str, os.PathLike)) else None
    if eval_dataset is not None:
        eval_dataset = _load_eval_data(eval_dataset, dataset, eval_split, eval_limit, model, wanted, options)
    training = load_image_dataset(
        dataset,
        split=options.get("split", _DECOMPOSE_DEFAULTS["split"]),
        revision=options.get("dataset_revision"),
        config_name=options.get("dataset_config"),
    )
    find_columns(training, options.get("image_column"), options.get("label_column"))  # a wrong column: said first
    done, foreign = _resumable(output, wanted, _expected_provenance(model, training, options, state), overwrite)
    todo = [label for label in wanted if label not in done]
    earlier = _read_report(output) if not todo else None  # nothing rebuilt: the earlier measurements still hold

    timings = _build_and_save(model, dataset, output, todo, state, progress, options) if todo else {}
    if state.is_main_process and overwrite:
        # What the output held at the start and is not this run's goes, now that this run's modules exist; nothing
        # that appeared meanwhile is touched.
        ours = {module_directory_name(label) for label in wanted}
        for name in foreign:
            if name not in ours:
                _remove(output / name)

    report: dict[str, Any] = {"parent": model.config.name_or_path or None, "modules": {}, "timings": timings}
    if eval_dataset is None and not state.is_main_process:
        return report
    # Every process reads the written modules (those of an earlier run too) and evaluates its share of the rows,
    # on its own device as the passes did.
    with library_bars_off():
        modules = {
            label: ModularResNetForImageClassification.from_pretrained(output / module_directory_name(label)).to(
                state.device
            )
            for label in wanted
        }
    _describe_modules(report, modules, done, measured_now=eval_dataset is not None, earlier=earlier)
    if eval_dataset is not None:
        logger.info("Evaluating the parent and the %d module(s) on %d images", len(modules), len(eval_dataset))
        evaluation_started = time.perf_counter()
        where = {
            "dataset": dataset_name(eval_dataset, eval_source) or "an in-memory datasets.Dataset",
            "split": dataset_split(eval_dataset, eval_split) if eval_source is None else eval_split,
        }
        columns = {key: options.get(key) for key in ("image_column", "label_column")}  # decompose's, if given
        _measure_modules(report, model, modules, eval_dataset, where, columns, state, progress)
        timings["evaluation_seconds"] = time.perf_counter() - evaluation_started
    if not state.is_main_process:
        return report
    for label, module in modules.items():
        write_card(module.config, output / module_directory_name(label))
    timings["total_seconds"] = time.perf_counter() - started
    _write_json_atomically(output / REPORT_NAME, report)
    return report


def _build_and_save(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset | str | os.PathLike,
    output: Path,
    todo: list[str],
    state: PartialState,
    progress: bool,
    options: dict[str, Any],
) -> dict[str, float]:
    """Decompose the classes `todo` and save their modules into `output`; returns the timings for the report.

    Each module is saved (atomically) as soon as it is built, so a run stopped after it keeps it and a rerun skips
    it. Once all are built, their configs get the whole run's cost in place of the cost up to each."""
    logger.info("Decomposing into %d module(s): %s", len(todo), ", ".join(todo))
    started = time.perf_counter()
    options = dict(options)
    theirs = options.pop("on_module", None)  # a caller's own callback runs once the module is saved

    def save(label: str, module: ModularResNetForImageClassification) -> None:
        # Every process holds the same modules; the main one writes them (transformers saves weights on rank 0 only).
        if state.is_main_process:
            with library_bars_off():  # a few small files: no bar per file
                module.save_pretrained(output / module_directory_name(label))
            logger.info("Saved %s (%d of %d)", module_directory_name(label), todo.index(label) + 1, len(todo))
        if theirs is not None:
            theirs(label, module)

    modules = decompose(model, dataset, classes=todo, accelerator=state, progress=progress, on_module=save, **options)
    timings = {
        "decompose_seconds": time.perf_counter() - started,
        "statistics_seconds": next(iter(modules.values())).config.provenance.compute["statistics_seconds"],
    }
    if state.is_main_process:
        for label, module in modules.items():
            write_card(module.config, output / module_directory_name(label))
    state.wait_for_everyone()
    return timings


def _load_eval_data(
    eval_dataset: str | os.PathLike | datasets.Dataset,
    dataset: datasets.Dataset | str | os.PathLike,
    eval_split: str,
    eval_limit: int | None,
    model: ModularResNetForImageClassification,
    wanted: list[str],
    options: dict[str, Any],
) -> datasets.Dataset:
    """The evaluation rows: those of the classes decomposed (the composition answers only those; the other classes'
    images are neither decoded nor counted against `eval_limit`), the first `eval_limit` of them when given. The
    training data's pinned revision and configuration hold for its other splits."""
    same = str(eval_dataset) == str(dataset)
    revision, config_name = (options.get("dataset_revision"), options.get("dataset_config")) if same else (None, None)
    try:
        eval_dataset = load_image_dataset(eval_dataset, split=eval_split, revision=revision, config_name=config_name)
        label_column = find_label_column(eval_dataset, options.get("label_column"))
        dataset_to_model_labels(label_names(eval_dataset, label_column), model.config.id2label)  # the model's names
        if bool((label_ids(eval_dataset, label_column) < 0).all()):
            raise ValueError(f"its {label_column!r} column has no labels (every row is -1, unlabelled).")
        rows = rows_of_classes(eval_dataset, wanted, label_column, eval_limit)
        if len(rows) == 0:
            names = ", ".join(wanted[:5]) + (", ..." if len(wanted) > 5 else "")
            raise ValueError(f"it has no images of the classes decomposed ({names}).")
    except ValueError as error:
        raise ValueError(f"The evaluation data (split {eval_split!r}): {error}") from error
    return rows


def _resumable(
    output: Path, wanted: list[str], expected: dict[str, Any], overwrite: bool
) -> tuple[list[str], list[str]]:
    """(the wanted modules `output` already holds from a run with these parameters, the entries of `output` this
    run did not build), refusing what it must not replace: anything but a module, and other runs' modules unless
    `overwrite`."""
    done = [label for label in wanted if _is_complete(output, label, expected)]
    foreign = _foreign_entries(output, {module_directory_name(label) for label in done})
    strangers = [name for name in foreign if not _is_module_directory(output / name)]
    if strangers:  # --overwrite replaces modules, never the user's other files
        raise FileExistsError(
            f"{output} holds {', '.join(strangers[:5])}, which {'is' if len(strangers) == 1 else 'are'} not a class "
            "module; nothing was written. Choose another --output for the modules."
        )
    if foreign and not overwrite:
        raise FileExistsError(
            f"{output} already holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, not built by this "
            "decomposition (another parent, other parameters or other classes); nothing was written. Pass "
            "--overwrite (overwrite=True) to replace them with this run's modules, or choose another --output."
        )
    if done:
        logger.info("Resuming: %d module(s) already built with the same parameters: %s", len(done), ", ".join(done))
    return done, foreign


def _describe_modules(
    report: dict[str, Any],
    modules: dict[str, ModularResNetForImageClassification],
    done: list[str],
    *,
    measured_now: bool,
    earlier: dict[str, Any] | None,
) -> None:
    """Fill `report` with what each module keeps of the parent, its samples, the method and its headline mean;
    without new measurements, the figures an earlier run measured on the same modules."""
    provenance = {label: module.config.provenance for label, module in modules.items()}
    for label, info in provenance.items():
        report["modules"][label] = {
            "directory": module_directory_name(label),
            **describe(info).figures,  # how much of the parent the module keeps, in its strategy's terms
            "samples": {"own": info.samples.own, "negative": info.samples.negative},
            "resumed": label in done,
        }
        if not measured_now and info.evaluation:  # measured by an earlier run: a module keeps its figures
            report["modules"][label]["binary_accuracy"] = info.evaluation["binary_accuracy"]
            if info.evaluation.get("own_vs_rest"):
                report["modules"][label]["own_vs_rest"] = info.evaluation["own_vs_rest"]
    if not measured_now and earlier and "evaluation" in earlier and set(earlier.get("modules", {})) == set(modules):
        report["evaluation"] = earlier["evaluation"]  # the same modules as then: the composition's figures hold
    first = next(iter(provenance.values()))
    report["method"] = {"strategy": first.method.strategy, **first.method.parameters}
    headline = STRATEGIES[first.method.strategy].headline
    values = [row[headline] for row in report["modules"].values() if headline in row]
    if values:
        report[f"mean_{headline}"] = sum(values) / len(values)


def _measure_modules(
    report: dict[str, Any],
    model: ModularResNetForImageClassification,
    modules: dict[str, ModularResNetForImageClassification],
    eval_dataset: datasets.Dataset,
    where: dict[str, str],
    columns: dict[str, str | None],
    state: PartialState,
    progress: bool,
) -> None:
    """Measure the parent and the modules on `eval_dataset` (data-parallel, on this process's device; the parent
    goes back where it was) into `report`, and into each module's provenance, whence its config and card."""
    home, _ = device_and_dtype(model)
    try:
        result = evaluate_composition(
            model.to(state.device), modules, eval_dataset, state=state, progress=progress, **columns
        )
    finally:
        model.to(home)
    subset = len(modules) < model.config.num_labels
    for label, accuracy in result.module_binary_accuracy.items():
        report["modules"][label]["binary_accuracy"] = accuracy
        report["modules"][label]["own_vs_rest"] = result.own_vs_rest[label]
    summary = {
        **where,
        "images": result.parent.count,
        "modules": len(modules),
        # A subset's images only: the composition chooses among these classes, the parent among all of its own,
        # and again among these only (the fair comparison).
        "classes": list(modules) if subset else None,
        "parent": {"top1": result.parent.top1, "top5": result.parent.top5},
        "composed": {"top1": result.composed.top1, "top5": result.composed.top5},
    }
    if subset:
        among = result.parent_among_classes
        summary["parent_among_classes"] = {"top1": among.top1, "top5": among.top5}
    report["evaluation"] = {
        **summary,
        "per_class": {
            label: {
                "parent": result.parent.per_class[label],
                "composed": result.composed.per_class[label],
                **({"parent_among_classes": result.parent_among_classes.per_class[label]} if subset else {}),
            }
            for label in result.parent.per_class
        },
    }
    for label, module in modules.items():  # the measurements travel with each module, in its config and card
        info = module.config.provenance
        info.evaluation = {
            **summary,
            "binary_accuracy": result.module_binary_accuracy[label],
            "own_vs_rest": result.own_vs_rest[label],
        }
        module.config.provenance = info


def check_writable(output: Path) -> None:
    """Make sure files can be written in `output` (a directory this check creates is taken away again)."""
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
        if created:
            output.rmdir()
    except OSError as error:
        raise OSError(
            f"Cannot write into the output directory {output} ({error.strerror or error}). Choose another --output, "
            "or fix its permissions."
        ) from error


def write_card(config: ModularResNetConfig, directory: Path, repo_id: str | None = None) -> None:
    """Write `config.json` and the model card `README.md` into a module directory, each file replaced atomically."""
    with atomic_directory(directory) as staging:
        config.save_pretrained(staging)
        module_card(config, repo_id).save(staging / "README.md")


def _foreign_entries(output: Path, ours: set[str]) -> list[str]:
    """What `output` holds besides this run's module directories (`ours`), its report and hidden bookkeeping."""
    return sorted(
        entry.name
        for entry in output.iterdir()
        if entry.name not in ours and entry.name != REPORT_NAME and not entry.name.startswith(".")
    )


def _is_module_directory(path: Path) -> bool:
    try:
        return path.is_dir() and "module" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _read_report(output: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(output: Path, label: str, expected: dict[str, Any]) -> bool:
    """Whether `output` already holds this class's module, built from the same parent and data with the same
    parameters (`expected`, see `_expected_provenance`). Stricter than the push check's `_identity`
    (`hub/checks.py`), which compares modules built on other machines: a resumed run reads the same data, so it
    compares the data's fingerprint, and the mixed precision the statistics pass ran in."""
    directory = output / module_directory_name(label)
    if not (directory / "model.safetensors").is_file():
        return False
    try:
        info = ModularResNetConfig.from_pretrained(directory).provenance
    except (OSError, ValueError):
        return False
    return (
        info.target_label == label
        and info.parent.weights_sha256 == expected["weights_sha256"]
        and (info.method.strategy, info.method.parameters) == expected["method"]
        and (info.sampling.samples_per_class, info.sampling.negatives_ratio, info.sampling.seed) == expected["sampling"]
        and (info.dataset.fingerprint, info.dataset.split) == expected["dataset"]
        and info.compute.get("mixed_precision", "no") == expected["mixed_precision"]
    )


# `decompose`'s own defaults, read from its signature so that they are stated once.
_DECOMPOSE_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(decompose).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def _expected_provenance(
    model, dataset: datasets.Dataset, options: dict[str, Any], state: PartialState
) -> dict[str, Any]:
    """What `decompose` would record for these options, to recognise modules an earlier run already built."""
    given = {**_DECOMPOSE_DEFAULTS, **options}
    method = strategy_among(given["strategy"], options)
    sampling = (given["samples_per_class"], given["negatives_ratio"], given["seed"])
    split = dataset_split(dataset, given["split"])
    return {
        "weights_sha256": weights_sha256(model),
        "method": (method.name, method.parameters()),
        "sampling": sampling,
        "dataset": (dataset_fingerprint(dataset), split),
        "mixed_precision": mixed_precision_of(state),  # autocast can change the statistics pass's signs
    }


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, path)
