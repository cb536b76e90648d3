"""The `hf-modular` command line: the commands, the global options, and errors as one line.

It answers `hf-modular --help`, `--version` and a mistyped command without loading torch: what each command does
lives in the `commands` package, which is loaded only for the command given (its options show the library's own
defaults, so building them needs the library).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from collections.abc import Sequence

from .version import __version__

# name -> what it does (the command list of `hf-modular --help`); `commands.ARGUMENTS` holds each one's options.
COMMANDS = {
    "demo": "train a parent on scikit-learn's digits, decompose it, compose the modules (offline)",
    "train": "train a ModularResNet parent on an image-classification dataset (Accelerate)",
    "info": "describe a saved model, module or composition (directory or Hub repo id), or a decomposition's output",
    "import": "convert a CIFAR ResNet checkpoint or a transformers ResNet into a ModularResNet directory",
    "decompose": "decompose a classifier into one module per class (the paper's method, or compact modules)",
    "push": "push every module in a decomposition's output directory to its own Hub repo",
    "push-parent": "push a plain model directory (a parent) to a Hub repo with its card",
    "card": "render the model card (README.md) of a saved model or module directory",
    "compose": "compose modules (local directories or Hub repo ids, @revision to pin) into a classifier",
    "replace": "swap one class's module in a composed model",
    "fit": "fit a composed model's heads again (after a member changed), or calibrate it",
    "evaluate": "top-1/top-5 and per-class accuracy of a model or composed model on a dataset split",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with defaults, only where a default tells something: not for flags, required options, a
    default of None, or help that states its own default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.nargs == 0 or action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


def _commands() -> types.ModuleType:
    """The commands' code (torch, transformers, datasets): loaded when a command runs or shows its options."""
    return importlib.import_module(f"{__package__}.commands")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of `command` only: of every command when None, of none when `command` names
    none (argparse then lists the commands or says the name is unknown)."""
    parser = argparse.ArgumentParser(
        prog="hf-modular",
        description="Decompose CNN classifiers into per-class modules, share them on the Hub, compose new models.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hf-modular {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    loudness.add_argument(
        "-v", "--verbose", action="store_true", help="also the libraries' own messages and per-file progress bars"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        subparser = subparsers.add_parser(
            name, help=summary, description=summary, formatter_class=parser.formatter_class
        )
        if command in (None, name):
            _commands().ARGUMENTS[name](subparser)
    return parser


def _command_in(argv: Sequence[str]) -> str:
    """The command named on the command line: the first word that is no option, or "" when there is none. (This
    holds while no global option takes a value; `tests/test_lazy_import.py` checks that.)"""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command_in(argv)).parse_args(argv)
        commands = _commands()
    except KeyboardInterrupt:  # while torch and the libraries load: nothing has started yet
        if "--debug" in argv:
            raise
        print("hf-modular: interrupted while starting; nothing was done.", file=sys.stderr)
        return 130
    try:
        commands.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"hf-modular {args.command}: interrupted.{commands.interruption_hint(args)}", file=sys.stderr)
        return 130  # the shell's code for a command ended by Ctrl-C
    except Exception as error:
        if args.debug:
            raise
        print(f"hf-modular {args.command}: error: {commands.message(error)}", file=sys.stderr)
        print(f"(run `hf-modular --debug {args.command} ...` for the full traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
