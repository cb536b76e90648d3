"""`evaluate`: a model's, module's or composition's accuracy on a dataset split."""

from __future__ import annotations

import argparse
import json

from ..compose import ComposedModel
from ..data import load_image_dataset, rows_of_classes
from ..distributed import distributed_state
from ..evaluation import evaluate
from .loading import load_model
from .options import COUNT, add_column_options, add_compute_options, add_data_options, add_pickle_option, default_of


def run_evaluate(args: argparse.Namespace) -> None:
    state = distributed_state(cpu=args.cpu, mixed_precision=args.mixed_precision)
    model = load_model(args).to(state.device)
    dataset = load_image_dataset(
        args.dataset, split=args.split, revision=args.dataset_revision, config_name=args.dataset_config
    )
    if isinstance(model, ComposedModel):  # measured on its classes' images: the limit counts those
        dataset = rows_of_classes(dataset, model.labels, args.label_column, args.limit)
    elif args.limit:
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
    top5 = f"  top-5 {100 * result.top5:.2f}%" if model.config.num_labels > 5 else ""  # else always 100%
    print(f"top-1 {100 * result.top1:.2f}%{top5}  on {result.count} images")
    for label, recall in result.per_class.items():
        print(f"  {label:<20} {100 * recall:6.2f}%")


def add_evaluate_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "model", metavar="PATH_OR_REPO", help="a classifier, a module or a composition: directory or Hub repo id"
    )
    command.add_argument("--dataset", required=True, help="Hub name, .parquet file, or folder")
    add_data_options(command)
    command.add_argument("--split", default="test", help="(default: %(default)s)")
    command.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    add_column_options(command)
    command.add_argument(
        "--batch-size", type=COUNT, default=default_of(evaluate, "batch_size"), help="(default: %(default)s)"
    )
    command.add_argument(
        "--limit", type=COUNT, default=None, help="evaluate only the first N images (of a composition's classes)"
    )
    command.add_argument("--json", action="store_true", help="print JSON")
    add_compute_options(command)
    add_pickle_option(command)
    command.set_defaults(run=run_evaluate)
