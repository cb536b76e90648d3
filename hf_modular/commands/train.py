"""`train` and `demo`: commands that train a parent."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from accelerate.utils import set_seed

from .. import demo
from ..data import dataset_name, find_label_column, label_names, load_image_dataset, pinned_revision
from ..distributed import on_main_process, training_accelerator
from ..hub import check_write_access, parent_card, push_directory, push_modules
from ..models import ModularResNetConfig, ModularResNetForImageClassification
from ..saving import atomic_directory, check_overwrite
from ..train import train
from ..validation import cli_number
from .errors import message
from .hub import print_pushes, refuse_a_model_push_now
from .options import COUNT, add_column_options, add_compute_options, add_data_options, add_overwrite_option, default_of

CHECKPOINTS = "training"  # `hf-modular train`'s checkpoints, inside its --output


def run_demo(args: argparse.Namespace) -> None:
    check_overwrite(args.output, args.overwrite)
    if args.push_to:
        check_write_access(args.push_to)  # before the demo's work, not after it
    if args.overwrite and Path(args.output).exists():
        # The demo fills its folder step by step: an earlier run's files go first (the folder itself stays: it may
        # be where a link leads).
        for entry in Path(args.output).iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    summary = demo.run_demo(args.output, seed=args.seed, quick=args.quick, progress=not args.quiet)
    if args.push_to:
        summary["pushed"] = {
            label: result.repo_id for label, result in push_modules(Path(args.output) / "modules", args.push_to).items()
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print((Path(summary["output"]) / "report.md").read_text())
    print(f"Parent, modules (with cards), summary.json and report.md are in {summary['output']}.")


def run_train(args: argparse.Namespace) -> None:
    output = Path(args.output)
    accelerator = training_accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    if not (output.is_dir() and {entry.name for entry in output.iterdir()} <= {CHECKPOINTS}):
        check_overwrite(output, args.overwrite)  # an interrupted run's checkpoints alone are resumed, not refused
    if args.push_to:
        refuse_a_model_push_now(args.push_to, accelerator)
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
    label_column = find_label_column(train_split, args.label_column)
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
        image_column=args.image_column,
        label_column=args.label_column,
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
            print_pushes({"model": push_directory(output, args.push_to, model=model, private=args.private)})
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


def add_demo_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--output", default="hf-modular-demo", metavar="DIR", help="where to write everything")
    command.add_argument("--seed", type=int, default=default_of(demo.run_demo, "seed"), help="(default: %(default)s)")
    command.add_argument("--quick", action="store_true", help="a smaller run, for CI")
    command.add_argument("--json", action="store_true", help="print the summary as JSON")
    command.add_argument("--push-to", default=None, metavar="NAMESPACE", help="also push the ten modules to the Hub")
    add_overwrite_option(command)
    command.set_defaults(run=run_demo)


def add_train_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dataset", required=True, help="Hub name, .parquet file, or folder")
    add_data_options(command)
    add_column_options(command)
    command.add_argument("--preset", default="modular_resnet20", help="architecture (see hf_modular.PRESETS)")
    command.add_argument("--from-timm", default=None, metavar="NAME", help="start from a timm ResNet (e.g. resnet18)")
    command.add_argument("--pretrained", action="store_true", help="with --from-timm: load timm's pretrained weights")
    command.add_argument("--push-to", default=None, metavar="REPO_ID", help="push the trained model to the Hub")
    command.add_argument("--private", action="store_true", help="with --push-to: create the repo private")
    command.add_argument("--split", default="train", help="the split to train on")
    command.add_argument("--eval-split", default="test", help="evaluated after every epoch ('' to skip)")
    command.add_argument("--epochs", type=COUNT, default=default_of(train, "epochs"), help="passes over the data")
    command.add_argument(
        "--batch-size", type=COUNT, default=default_of(train, "batch_size"), help="rows per step (over all processes)"
    )
    command.add_argument(
        "--learning-rate", type=cli_number(above=0), default=default_of(train, "learning_rate"), help="at the start"
    )
    command.add_argument("--no-flip", action="store_true", help="no horizontal flips (digits, text)")
    command.add_argument(
        "--seed",
        type=cli_number(minimum=0, integer=True),
        default=default_of(train, "seed"),
        help="of the initial weights, the epoch orders and the augmentation",
    )
    command.add_argument(
        "--output", required=True, metavar="DIR", help="the trained model; checkpoints in DIR/training"
    )
    add_overwrite_option(command)
    add_compute_options(command)
    command.set_defaults(run=run_train)
