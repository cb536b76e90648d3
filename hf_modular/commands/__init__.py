"""What each `hf-modular` command does: one module per group of commands, each command a `run_*` function (a thin
layer over a library function) and an `add_*_arguments` function (its options). `cli.py` parses the command line
and imports this package only for a command that runs or shows its options, since it imports torch and
transformers.

- `models`: `info`, `import`, `card` (one saved model)
- `evaluate`: `evaluate`
- `decompose`: `decompose`
- `compose`: `compose`, `replace`, `fit`
- `hub`: `push`, `push-parent`, and the time limit on Hub requests
- `train`: `train`, `demo`
- `loading` and `options`: what several commands share; `errors`: a failed command's one line
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .. import console
from ..models.loading import split_revision
from ..train import STATE_FILE
from . import compose, decompose, evaluate, hub, models, train
from .errors import message as message  # cli.py prints a failed command's error with it
from .hub import hub_timeout, limit_hub_requests
from .train import CHECKPOINTS

# Every command's options, by name (`cli.COMMANDS` has their one-line summaries, in the same order).
ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "demo": train.add_demo_arguments,
    "train": train.add_train_arguments,
    "info": models.add_info_arguments,
    "import": models.add_import_arguments,
    "decompose": decompose.add_decompose_arguments,
    "push": hub.add_push_arguments,
    "push-parent": hub.add_push_parent_arguments,
    "card": models.add_card_arguments,
    "compose": compose.add_compose_arguments,
    "replace": compose.add_replace_arguments,
    "fit": compose.add_fit_arguments,
    "evaluate": evaluate.add_evaluate_arguments,
}


def interruption_hint(args: argparse.Namespace) -> str:
    """What a command stopped by Ctrl-C has kept, and how to go on."""
    if args.command == "train":
        if (Path(args.output) / CHECKPOINTS / STATE_FILE).is_file():
            return " Rerun the same command to resume from the last completed epoch."
        return " No epoch had finished, so nothing was saved."
    if args.command == "decompose":
        # Each module is saved as soon as it is built (`decompose.output._build_and_save`), so what is kept is what
        # the output holds now; the statistics pass is shared by the modules of a run, so the rerun does it again
        # for the missing ones.
        output = Path(args.output) if getattr(args, "output", None) else None
        modules = [p for p in output.glob("*/model.safetensors") if p.parent.name[0] != "."] if output else []
        if output is not None and not modules:
            return " No module had been saved yet (the statistics pass comes first); the same command starts over."
        where = f" ({len(modules)} in {args.output})" if modules else ""
        return (
            f" Rerun the same command to resume: the modules it finished writing are kept{where} and skipped; the "
            "statistics pass and the report are redone for the others."
        )
    return ""


def run(args: argparse.Namespace) -> None:
    """Run the parsed command: the chosen loudness, a time limit on every Hub request, then the command itself."""
    console.configure(console.QUIET if args.quiet else console.VERBOSE if args.verbose else console.DEFAULT)
    limit_hub_requests(hub_timeout())
    if hasattr(args, "model") and hasattr(args, "revision"):
        args.model, args.revision = split_revision(args.model, args.revision)
    args.run(args)
