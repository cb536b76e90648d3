"""The `hf-modular` command. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger("hf_modular")


def _info(args: argparse.Namespace) -> None:
    from .modeling_modular_resnet import ModularResNetForImageClassification

    model = ModularResNetForImageClassification.from_pretrained(args.model, revision=args.revision)
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
        "module": config.module,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        if value is not None:
            print(f"{key:<{width}}  {value}")


def _import(args: argparse.Namespace) -> None:
    from .convert import CIFAR10_LABELS, import_cifar_resnet

    labels = args.labels.split(",") if args.labels else CIFAR10_LABELS
    model = import_cifar_resnet(args.checkpoint, labels=labels)
    model.save_pretrained(args.output)
    print(f"Saved {model.config.preset or 'modular_resnet'} ({model.config.num_labels} classes) to {args.output}")


def _evaluate(args: argparse.Namespace) -> None:
    from .data import load_image_dataset
    from .evaluation import evaluate
    from .modeling_modular_resnet import ModularResNetForImageClassification

    model = ModularResNetForImageClassification.from_pretrained(args.model, revision=args.revision)
    dataset = load_image_dataset(args.dataset, split=args.split)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    result = evaluate(
        model,
        dataset,
        image_column=args.image_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(vars(result), indent=2))
        return
    print(f"top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  on {result.count} images")
    for label, recall in result.per_class.items():
        print(f"  {label:<20} {100 * recall:6.2f}%")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hf-modular",
        description="Decompose CNN classifiers into per-class modules, share them on the Hub, compose new models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hf-modular {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, formatter_class=parser.formatter_class)

    info = command("info", "describe a saved model or module (local directory or Hub repo id)")
    info.add_argument("model", metavar="PATH_OR_REPO")
    info.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)

    imp = command("import", "convert a CIFAR ResNet checkpoint (akamaster layout) into a ModularResNet directory")
    imp.add_argument("checkpoint", metavar="CHECKPOINT", help="a .th/.pt file, read with weights_only=True")
    imp.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    imp.add_argument("--labels", default=None, help="comma-separated class names (default: CIFAR-10's)")
    imp.set_defaults(run=_import)

    ev = command("evaluate", "top-1/top-5 and per-class accuracy of a model on a dataset split")
    ev.add_argument("model", metavar="PATH_OR_REPO")
    ev.add_argument("--dataset", required=True, help="Hub name, .parquet file, or folder")
    ev.add_argument("--split", default="test")
    ev.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    ev.add_argument("--image-column", default=None, help="default: the dataset's Image column")
    ev.add_argument("--label-column", default=None, help="default: the dataset's ClassLabel column")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(run=_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        args.run(args)
    except Exception as error:
        if args.debug:
            raise
        print(f"hf-modular {args.command}: error: {error}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
