"""Options that several commands share, and the library defaults they show."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from ..distributed import MIXED_PRECISION
from ..validation import cli_number

COUNT = cli_number(minimum=1, integer=True)  # sizes and counts: a whole number, at least one


def default_of(function: Any, parameter: str) -> Any:
    """The API's own default for one of `function`'s parameters, so the CLI never restates it."""
    return inspect.signature(function).parameters[parameter].default


def add_compute_options(command: argparse.ArgumentParser) -> None:
    """Where and in which precision a command runs models (under `accelerate launch`, on every process)."""
    command.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    command.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        default="no",
        help="Accelerate's autocast: bf16 is several times faster on GPUs and on CPUs with AMX (what train and "
        "decompose write records it)",
    )


def add_data_options(command: argparse.ArgumentParser) -> None:
    """The data options of a command that reads one dataset (`--dataset`)."""
    add_dataset_version_options(command, "--dataset", after_a_fit=False)
    command.add_argument(
        "--num-workers", type=cli_number(minimum=0, integer=True), default=0, help="processes that decode images"
    )


def add_dataset_version_options(command: argparse.ArgumentParser, of: str, *, after_a_fit: bool = True) -> None:
    """The Hub dataset's revision and configuration, for the data options named in `of`; `after_a_fit`: the
    command works on a composition that may have been fitted, whose last fit's choices are the defaults."""
    last_commit = "the commit the last fit on it read, else " if after_a_fit else ""
    command.add_argument(
        "--dataset-revision",
        default=None,
        metavar="REV",
        help=f"branch, tag or commit of the Hub dataset of {of} (default: {last_commit}its main branch)",
    )
    command.add_argument(
        "--dataset-config",
        default=None,
        metavar="NAME",
        help=f"configuration of the Hub dataset of {of}" + (" (default: the last fit's on it)" if after_a_fit else ""),
    )


def add_pickle_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a model saved only as a pickle checkpoint (pytorch_model.bin), which can run code: trusted only",
    )


def add_remote_code_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--remote-code",
        action="store_true",
        help="also publish auto_map and code files that import hf_modular, for from_pretrained(trust_remote_code=True)",
    )


def add_overwrite_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--overwrite", action="store_true", help="replace what --output already holds (refused without it)"
    )


def add_column_options(command: argparse.ArgumentParser) -> None:
    """Which columns hold the images and labels, for a dataset with more than one Image or ClassLabel column."""
    command.add_argument("--image-column", default=None, help="default: the dataset's Image column")
    command.add_argument("--label-column", default=None, help="default: the dataset's ClassLabel column")
