"""The demo (the README's main command) and the parent trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download

from hf_modular import ModularResNetForImageClassification, load_module
from hf_modular.cli import main
from hf_modular.demo import digits_dataset, digits_parent_config
from hf_modular.train import STATE_FILE, train
from tests.hub_server import hub_server_fixture  # noqa: F401


def test_demo_runs_and_pushes_its_modules(tmp_path, hub_server, capsys):
    """The README's main job at CI's size (one run: the demo takes most of a minute here)."""
    assert main(["-q", "demo", "--quick", "--output", str(tmp_path / "demo"), "--json", "--push-to", "user"]) == 0
    summary = json.loads(capsys.readouterr().out)
    pushed = summary.pop("pushed")  # the printed summary adds the pushes to what the run wrote
    assert summary == json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert len(summary["modules"]) == 10
    # A trained parent is far above chance (10%) even in the quick run, and the composition is measured beside it.
    assert summary["parent"]["top1"] > 0.5
    assert 0.0 <= summary["composed"]["top1"] <= 1.0
    module = load_module(str(tmp_path / "demo" / "modules" / "7-module"))
    assert module.config.provenance.target_label == "7"
    assert module.config.training is None  # the trained parent's record stays the parent's
    assert module.config.provenance.evaluation["images"] == summary["test_images"]
    assert "# 7 module of parent" in (tmp_path / "demo" / "modules" / "7-module" / "README.md").read_text()
    assert pushed["3"] == "user/parent-3-module" and len(pushed) == 10
    assert load_module("user/parent-3-module").config.provenance.target_label == "3"


def test_train_resumes_from_its_last_checkpoint(tmp_path):
    splits = digits_dataset(seed=0)
    small = splits["train"].select(range(200))
    model = ModularResNetForImageClassification(digits_parent_config())
    first = train(model, small, epochs=2, batch_size=50, horizontal_flip=False, output_dir=tmp_path, progress=False)
    assert [e["epoch"] for e in first.epochs] == [1, 2]
    assert json.loads((tmp_path / STATE_FILE).read_text())["epoch"] == 2
    # Each epoch is saved beside the last and the state file then names it: what a crash in the middle of a later
    # save leaves (a half-written directory) is never resumed from.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-2", STATE_FILE]
    umask = os.umask(0)
    os.umask(umask)
    for saved in (tmp_path / "checkpoint-2").iterdir():  # safetensors writes private files; checkpoints follow umask
        assert saved.stat().st_mode & 0o777 == 0o666 & ~umask, saved.name
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "model.safetensors").write_bytes(b"half written")
    again = ModularResNetForImageClassification(digits_parent_config())
    resumed = train(again, small, epochs=2, batch_size=50, horizontal_flip=False, output_dir=tmp_path, progress=False)
    assert resumed.epochs == first.epochs  # both epochs come from the saved state
    assert all(torch.equal(value, again.state_dict()[name]) for name, value in model.state_dict().items())
    assert again.config.training["final"] == first.final and again.config.training["previous"] is None
    # Other settings would not continue the saved cosine schedule: refused, naming what changed.
    with pytest.raises(ValueError, match=r"epochs=2 \(now 3\).*same settings"):
        train(again, small, epochs=3, batch_size=50, horizontal_flip=False, output_dir=tmp_path, progress=False)
    other_rows = splits["train"].select(range(200, 400))  # as many rows, other images
    with pytest.raises(ValueError, match=r"other settings: data="):
        train(again, other_rows, epochs=2, batch_size=50, horizontal_flip=False, output_dir=tmp_path, progress=False)
    wider = digits_parent_config()
    wider.widths = [16, 32, 96]
    with pytest.raises(ValueError, match=r"other settings: architecture=.*'widths': \[16, 32, 64\]"):
        train(
            ModularResNetForImageClassification(wider), small, epochs=2, batch_size=50, horizontal_flip=False,
            output_dir=tmp_path, progress=False,
        )  # fmt: skip
    # A checkpoint in Accelerate's format (an earlier release's: it loads pickles) is refused, saying what to do.
    state = json.loads((tmp_path / STATE_FILE).read_text())
    del state["checkpoint"]
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="earlier hf_modular.*new output directory"):
        train(again, small, epochs=2, batch_size=50, horizontal_flip=False, output_dir=tmp_path, progress=False)


def test_each_epoch_has_its_own_order():
    """Drawn from (seed, epoch) together: seed 1's first epoch is not seed 0's second."""
    from hf_modular.distributed import distributed_state
    from hf_modular.train import epoch_batches

    state = distributed_state()  # this process's (one process here)
    orders = {(seed, epoch): epoch_batches(100, 100, seed, epoch, state)[0] for seed in (0, 1) for epoch in (0, 1)}
    assert len({tuple(order) for order in orders.values()}) == 4
    assert orders[(0, 1)] == epoch_batches(100, 100, 0, 1, state)[0]  # and the same again


def test_train_rejects_labels_the_model_does_not_know():
    splits = digits_dataset(seed=0)
    config = digits_parent_config()
    config.id2label = {i: f"class-{i}" for i in range(10)}
    with pytest.raises(ValueError, match="labels the model does not know"):
        train(ModularResNetForImageClassification(config), splits["train"], epochs=1, progress=False)


def test_cli_train_writes_a_loadable_parent(tmp_path, capsys):
    splits = digits_dataset(seed=0)
    splits["train"].select(range(120)).to_parquet(str(tmp_path / "data" / "train.parquet"))
    splits["test"].select(range(40)).to_parquet(str(tmp_path / "data" / "test.parquet"))
    arguments = ["-q", "train", "--dataset", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "40"]
    assert main([*arguments, "--no-flip", "--output", str(tmp_path / "parent")]) == 0
    assert "after 1 epoch (mean training loss" in capsys.readouterr().out
    model = ModularResNetForImageClassification.from_pretrained(tmp_path / "parent")
    assert model.config.id2label == dict(enumerate(str(d) for d in range(10)))
    assert (tmp_path / "parent" / "training" / STATE_FILE).is_file()
    # The parent says how it was made: in its config (what `hf-modular info` shows), and in its card.
    training = model.config.training
    assert training["dataset"] == {
        "name_or_path": "./data",
        "split": "train",
        "rows": 120,
        "fingerprint": training["dataset"]["fingerprint"],
        "revision": None,
        "config_name": None,
        "image_column": "image",
        "label_column": "label",
    }
    assert training["eval_dataset"]["split"] == "test" and training["eval_dataset"]["rows"] == 40
    assert (training["epochs"], training["batch_size"], training["seed"], training["horizontal_flip"]) == (
        1,
        40,
        0,
        False,
    )
    assert (training["mixed_precision"], training["dtype"], training["processes"]) == ("no", "float32", 1)
    assert training["final"]["epoch"] == 1 and 0 <= training["final"]["top1"] <= 1
    card = (tmp_path / "parent" / "README.md").read_text()
    assert "## Training" in card and "`./data`, split `train`: 120 labelled of 120 images" in card
    assert f"top-1 {100 * training['final']['top1']:.2f}%" in card
    assert training["initial_weights"]["source"] == "modular_resnet20, random weights (seed 0)"
    assert "modular_resnet20, random weights (seed 0)" in card
    assert main(["info", str(tmp_path / "parent")]) == 0
    assert "1 epoch on ./data (split train, 120 images), seed 0, float32" in capsys.readouterr().out
    # The same --seed gives the same run, from the new model's initial weights on.
    assert main([*arguments, "--no-flip", "--output", str(tmp_path / "again")]) == 0
    again = ModularResNetForImageClassification.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(value, again[name]) for name, value in model.state_dict().items())


def test_cli_train_from_a_timm_resnet_and_push(tmp_path, hub_server, capsys):
    splits = digits_dataset(seed=0)
    splits["train"].select(range(40)).to_parquet(str(tmp_path / "data" / "train.parquet"))
    splits["test"].select(range(20)).to_parquet(str(tmp_path / "data" / "test.parquet"))
    code = main(
        [
            "-q",
            "train",
            "--dataset",
            str(tmp_path / "data"),
            "--from-timm",
            "resnet18",
            "--epochs",
            "1",
            "--batch-size",
            "20",
            "--no-flip",
            "--output",
            str(tmp_path / "parent"),
            "--push-to",
            "user/digits-resnet18",
            "--private",
        ]
    )
    assert code == 0
    assert "user/digits-resnet18" in capsys.readouterr().out
    assert HfApi().repo_info("user/digits-resnet18").private is True
    model = ModularResNetForImageClassification.from_pretrained("user/digits-resnet18")
    assert model.config.block_type == "basic" and model.config.layers == [2, 2, 2, 2]
    assert model.config.id2label[7] == "7"
    assert model.config.training["dataset"]["name_or_path"] == "./data"  # the card on the Hub tells it too
    card = Path(hf_hub_download("user/digits-resnet18", "README.md")).read_text()
    assert "## Training" in card and "(no flips)" in card


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tmp_path):
    from argparse import Namespace

    from hf_modular.commands import interruption_hint

    train_args = Namespace(command="train", output=str(tmp_path / "parent"))
    assert "nothing was saved" in interruption_hint(train_args)  # stopped during the first epoch
    (tmp_path / "parent" / "training").mkdir(parents=True)
    (tmp_path / "parent" / "training" / STATE_FILE).write_text("{}")
    assert "Rerun the same command to resume" in interruption_hint(train_args)
    assert "the modules it finished writing are kept" in interruption_hint(Namespace(command="decompose"))
