"""Careless input and faults: nothing the user made is overwritten or mixed, killed runs leave nothing that trips a
later command, broken rows are named, provenance tells the truth and publishes no local path."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

import hf_modular
from hf_modular import ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.data import load_image_dataset
from hf_modular.decompose import decompose_to_directory
from hf_modular.evaluation import evaluate
from hf_modular.saving import LOCK_NAME
from tests.conftest import randomize_
from tests.hub_server import hub_server_fixture  # noqa: F401
from tests.test_decompose import LABELS, dark_bright_dataset, image_dataset, tiny_config


@pytest.fixture(scope="module")
def parent() -> ModularResNetForImageClassification:
    torch.manual_seed(0)
    return randomize_(ModularResNetForImageClassification(tiny_config()).eval())


def all_text(directory: Path) -> str:
    return "\n".join(path.read_bytes().decode("utf-8", "replace") for path in directory.rglob("*") if path.is_file())


def test_modules_name_local_parents_and_data_by_base_name_only(tmp_path, parent, capsys):
    """Provenance is published with a module: no absolute path of the user's machine may be in it."""
    private = tmp_path / "home-of-alice" / "secret-projects"
    parent.save_pretrained(private / "my-parent")
    dark_bright_dataset().to_parquet(str(private / "train.parquet"))
    output = tmp_path / "out"
    code = main(
        ["-q", "decompose", str(private / "my-parent"), "--dataset", str(private / "train.parquet")]
        + ["--samples-per-class", "6", "--output", str(output)]
    )
    assert code == 0, capsys.readouterr().err
    module = output / "dark-module"
    info = ModularResNetConfig.from_pretrained(module).provenance
    assert (info.parent.path, info.dataset.name_or_path, info.dataset.split) == (
        "my-parent",
        "./train.parquet",
        "train",
    )
    assert "home-of-alice" not in all_text(module)
    assert "my-parent" in (module / "README.md").read_text() and "./train.parquet" in (module / "README.md").read_text()


def test_a_parquet_file_is_its_own_split_and_no_other(tmp_path, parent):
    data = dark_bright_dataset()
    data.to_parquet(str(tmp_path / "test.parquet"))
    data.to_parquet(str(tmp_path / "train.parquet"))
    assert load_image_dataset(tmp_path / "test.parquet", split="test").split == "test"
    with pytest.raises(ValueError, match=r"test.parquet holds the 'test' split \(by its name\), not 'train'"):
        load_image_dataset(tmp_path / "test.parquet", split="train")
    with pytest.raises(ValueError, match="has no parquet file of the .validation. split"):
        load_image_dataset(tmp_path, split="validation")
    # The module says it was built from the test split, and an eval split the data does not have is refused early.
    output = tmp_path / "out"
    decompose_to_directory(
        parent, tmp_path / "test.parquet", output, split="test", samples_per_class=6, classes=["dark"], progress=False
    )
    assert ModularResNetConfig.from_pretrained(output / "dark-module").provenance.dataset.split == "test"
    with pytest.raises(ValueError, match="holds the 'train' split"):
        decompose_to_directory(
            parent, tmp_path / "train.parquet", tmp_path / "other", eval_dataset=tmp_path / "train.parquet",
            eval_split="test", samples_per_class=6, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "other" / "dark-module").exists()


def test_import_and_compose_never_write_over_a_model_without_overwrite(tmp_path, akamaster_checkpoint, capsys):
    checkpoint, _ = akamaster_checkpoint(blocks_per_stage=1, num_classes=10)
    target = tmp_path / "model"
    assert main(["import", str(checkpoint), "--output", str(target)]) == 0
    (target / "README.md").write_text("my notes")
    weights = (target / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["import", str(checkpoint), "--labels", ",".join("abcdefghij"), "--output", str(target)]) == 1
    assert "already exists (a model directory); nothing was written. Pass --overwrite" in capsys.readouterr().err
    assert (target / "model.safetensors").read_bytes() == weights and (target / "README.md").read_text() == "my notes"
    # With --overwrite the directory is replaced as a whole: the old card does not stay beside the new weights.
    assert (
        main(["import", str(checkpoint), "--labels", ",".join("abcdefghij"), "--output", str(target), "--overwrite"])
        == 0
    )
    assert not (target / "README.md").exists()
    assert ModularResNetConfig.from_pretrained(target).id2label[0] == "a"
    # compose --output over that model directory is refused the same way.
    capsys.readouterr()
    assert main(["compose", str(target), "--output", str(target)]) == 1
    assert "would replace a module being composed" in capsys.readouterr().err


def test_a_decomposition_output_holds_one_decomposition(tmp_path, parent):
    data = dark_bright_dataset()
    output = tmp_path / "out"
    decompose_to_directory(parent, data, output, samples_per_class=6, progress=False)
    with pytest.raises(FileExistsError, match="already holds bright-module, dark-module, mid-module, not built by"):
        decompose_to_directory(parent, data, output, samples_per_class=5, progress=False)
    assert ModularResNetConfig.from_pretrained(output / "dark-module").provenance.sampling.samples_per_class == 6
    # overwrite=True: only this run's modules remain.
    decompose_to_directory(parent, data, output, samples_per_class=5, classes=["mid"], overwrite=True, progress=False)
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == [
        "decomposition.json",
        "mid-module",
    ]


def test_a_second_run_cannot_write_into_an_output_another_run_holds(tmp_path, parent):
    output = tmp_path / "out"
    output.mkdir()
    holder = subprocess.Popen(  # another process, as a concurrent `hf-modular decompose` would be
        [sys.executable, "-c", f"import filelock, sys, time; lock = filelock.FileLock({str(output / LOCK_NAME)!r}); "
         "lock.acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="Another hf-modular run is writing into"):
            decompose_to_directory(parent, dark_bright_dataset(), output, samples_per_class=6, progress=False)
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its process (as after kill -9): the next run goes ahead.
    decompose_to_directory(parent, dark_bright_dataset(), output, samples_per_class=6, progress=False)
    assert (output / "dark-module" / "model.safetensors").is_file()


def test_staging_debris_of_a_killed_run_is_cleaned_and_never_pushed(tmp_path, parent, hub_server):
    from hf_modular.hub import push_modules

    data = dark_bright_dataset()
    output = tmp_path / "out"
    decompose_to_directory(parent, data, output, samples_per_class=6, progress=False)
    debris = output / ".dark-module.k9x2.partial"  # what kill -9 during a module's write leaves
    debris.mkdir()
    (debris / "config.json").write_text("{")
    pushed = push_modules(output, "user", name_template="tiny-{label}-module")
    assert sorted(pushed) == sorted(LABELS)
    decompose_to_directory(parent, data, output, samples_per_class=6, progress=False)  # the rerun cleans up
    assert not debris.exists()


def test_a_rerun_without_evaluation_keeps_the_earlier_one(tmp_path, parent):
    data = dark_bright_dataset()
    output = tmp_path / "out"
    first = decompose_to_directory(parent, data, output, eval_dataset=data, samples_per_class=6, progress=False)
    again = decompose_to_directory(parent, data, output, samples_per_class=6, progress=False)
    assert again["evaluation"] == first["evaluation"]
    for label, row in again["modules"].items():
        assert row["resumed"] and row["binary_accuracy"] == first["modules"][label]["binary_accuracy"]
    assert json.loads((output / "decomposition.json").read_text())["evaluation"] == first["evaluation"]


def test_the_recorded_cost_is_the_calls_with_the_statistics_pass_a_part_of_it(tmp_path, parent):
    """The record is measured inside the call, the statistics pass inside the record. (That it spans everything from
    reading the data to labelling the modules is the measured block's extent in `decompose`; a timed assertion of
    it here would be noise.)"""
    import time

    dark_bright_dataset().to_parquet(str(tmp_path / "train.parquet"))
    started = time.perf_counter()
    modules = hf_modular.decompose(parent, tmp_path / "train.parquet", samples_per_class=6, progress=False)
    elapsed = time.perf_counter() - started
    compute = modules["dark"].config.provenance.compute
    assert 0 < compute["statistics_seconds"] < compute["wall_seconds"] <= elapsed


def test_an_image_of_another_size_is_named_by_its_row(tmp_path, parent):
    data = image_dataset([0] * 6 + [255] * 6 + [128] * 6, [0] * 6 + [1] * 6 + [2] * 6)
    odd = Image.new("RGB", (9, 8))
    rows = [dict(row) for row in data]
    rows[13]["image"] = odd
    mixed = datasets.Dataset.from_list(rows, features=data.features)
    with pytest.raises(ValueError, match="Row 13: its image is 9x8, but the model takes 8x8"):
        decompose_to_directory(parent, mixed, tmp_path / "out", samples_per_class=6, progress=False)


def test_a_truncated_jpeg_is_named_by_its_row(parent):
    data = dark_bright_dataset()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="JPEG")
    rows = [{"image": {"bytes": row["image"]}, "label": row["label"]} for row in _as_png_bytes(data)]
    rows[4]["image"] = {"bytes": buffer.getvalue()[: len(buffer.getvalue()) // 2], "path": None}
    broken = datasets.Dataset.from_list(rows, features=data.features)
    with pytest.raises(ValueError, match="Row 4: its image cannot be decoded"):
        evaluate(parent, broken, progress=False)
    rows[0]["image"] = {"bytes": b"not an image", "path": None}  # the first row, which size checks read first
    broken = datasets.Dataset.from_list(rows, features=data.features)
    for run in (lambda: evaluate(parent, broken, progress=False), lambda: hf_modular.decompose(parent, broken)):
        with pytest.raises(ValueError, match="Row 0: its image cannot be decoded"):
            run()


def _as_png_bytes(data: datasets.Dataset) -> list[dict]:
    rows = []
    for row in data:
        buffer = io.BytesIO()
        row["image"].save(buffer, format="PNG")
        rows.append({"image": buffer.getvalue(), "label": row["label"]})
    return rows


def test_saved_files_follow_the_users_umask(tmp_path, parent):
    previous = os.umask(0o022)
    try:
        parent.save_pretrained(tmp_path / "model")
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "model").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_a_hub_that_never_answers_is_an_error_not_a_hang(tmp_path, parent):
    import socket
    import time

    from tests.hub_server import client_env

    decompose_to_directory(parent, dark_bright_dataset(), tmp_path / "out", samples_per_class=6, progress=False)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections are accepted by the kernel, and never answered
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = {**os.environ, **client_env(url, tmp_path / "hf-home"), "HF_MODULAR_HUB_TIMEOUT": "1"}
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "hf_modular.cli", "push", str(tmp_path / "out"), "--namespace", "user"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert f"the Hub ({url}) did not answer within 1 s. Check the connection, or allow" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        silent.close()
    assert time.monotonic() - started < 240  # huggingface_hub's retries included


def test_a_batch_push_that_stops_says_what_is_live_and_a_rerun_finishes(tmp_path, parent, hub_server):
    from hf_modular.hub import PartialPushError, push_modules

    decompose_to_directory(parent, dark_bright_dataset(), tmp_path / "out", samples_per_class=6, progress=False)
    hub_server.fail_commits_to = {"user/batch-mid-module"}  # pushed in order: bright, dark, mid
    with pytest.raises(PartialPushError, match=r"Modules live on the Hub: bright \(user/batch-bright-module\), dark "):
        push_modules(tmp_path / "out", "user", name_template="batch-{label}-module")
    hub_server.fail_commits_to = set()
    results = push_modules(tmp_path / "out", "user", name_template="batch-{label}-module")
    assert {label: result.changed for label, result in results.items()} == {"bright": False, "dark": False, "mid": True}


def test_a_commit_whose_answer_was_lost_is_reported_as_landed(tmp_path, parent, hub_server):
    from huggingface_hub import HfApi

    from hf_modular.hub import push_directory

    decompose_to_directory(parent, dark_bright_dataset(), tmp_path / "out", samples_per_class=6, progress=False)
    hub_server.lose_next_commit_answer = True
    result = push_directory(tmp_path / "out" / "dark-module", "user/lost-answer")
    assert result.changed and result.commit_sha == HfApi().repo_info("user/lost-answer").sha
    # A push that fails before its commit lands still says so.
    hub_server.fail_next_commit = True
    with pytest.raises(ConnectionError, match="this one did not land"):
        push_directory(tmp_path / "out" / "mid-module", "user/lost-answer", overwrite=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layers", [1, "x"], "each entry of config field `layers` must be an integer >= 1, got 'x'"),
        ("layers", [1.5, 1], "each entry of config field `layers` must be an integer >= 1, got 1.5"),
        ("image_size", "32", "config field `image_size` must be an integer >= 1, got '32'"),
        ("image_size", -4, "config field `image_size` must be an integer >= 1, got -4"),
        ("widths", "abc", "config field `widths` must be a list of integers >= 1, got 'abc'"),
        ("module", "garbage", "config.json `module` must be an object, got str"),
        ("module", {"target_label": "cat"}, "config.json `module.target_index` is missing"),
    ],
)
def test_a_hand_edited_config_is_refused_with_the_fields_name(tmp_path, parent, capsys, field, value, message):
    parent.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, field: value}))
    assert main(["info", str(tmp_path / "model")]) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_an_empty_dataset_is_named_as_such(tmp_path, parent, capsys):
    parent.save_pretrained(tmp_path / "model")
    dark_bright_dataset().select([]).to_parquet(str(tmp_path / "train.parquet"))
    assert main(["evaluate", str(tmp_path / "model"), "--dataset", str(tmp_path / "train.parquet"), "--split", "train"])
    assert "train.parquet has no rows: there is nothing to read" in capsys.readouterr().err
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")  # pyarrow's own message names no file
    broken = ["evaluate", str(tmp_path / "model"), "--dataset", str(tmp_path / "broken.parquet"), "--split", "train"]
    assert main(broken) == 1
    assert f"{tmp_path / 'broken.parquet'} is not a readable parquet file (" in capsys.readouterr().err


def test_other_commands_respect_a_running_decomposition(tmp_path, parent, akamaster_checkpoint, capsys):
    output = tmp_path / "out"
    output.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import filelock, time; lock = filelock.FileLock({str(output / LOCK_NAME)!r}); "
         "lock.acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    checkpoint, _ = akamaster_checkpoint(blocks_per_stage=1, num_classes=10)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["import", str(checkpoint), "--output", str(output), "--overwrite"]) == 1
        assert "Another hf-modular run is writing into" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # Once that run is over, its lock file alone does not make the directory "existing".
    assert main(["import", str(checkpoint), "--output", str(output)]) == 0


def test_compose_never_writes_over_a_module_it_composes(tmp_path, parent, capsys):
    decompose_to_directory(parent, dark_bright_dataset(), tmp_path / "out", samples_per_class=6, progress=False)
    weights = (tmp_path / "out" / "dark-module" / "model.safetensors").read_bytes()
    for output in ("dark-module", "."):
        command = ["compose", str(tmp_path / "out" / "mid-module"), str(tmp_path / "out" / "dark-module")]
        assert main([*command, "--output", str(tmp_path / "out" / output), "--overwrite"]) == 1
        assert "would replace a module being composed" in capsys.readouterr().err
    assert (tmp_path / "out" / "dark-module" / "model.safetensors").read_bytes() == weights


def test_a_missing_eval_split_is_named_as_the_evaluations(tmp_path, parent, capsys):
    dark_bright_dataset().to_parquet(str(tmp_path / "train.parquet"))
    parent.save_pretrained(tmp_path / "model")
    data = str(tmp_path / "train.parquet")
    base = ["decompose", str(tmp_path / "model"), "--dataset", data, "--output", str(tmp_path / "out")]
    assert main([*base, "--eval-split", "test"]) == 1
    assert "The evaluation data (split 'test'): train.parquet holds the 'train' split" in capsys.readouterr().err
    assert main([*base, "--eval-limit", "5"]) == 1
    assert "--eval-limit limits the evaluation, which needs --eval-split" in capsys.readouterr().err


def test_an_imagenet_stem_model_takes_images_of_any_size(parent):
    """Its processor resizes and crops, as in training: only small-input (CIFAR-stem) models need their own size."""
    torch.manual_seed(0)
    model = ModularResNetForImageClassification(tiny_config(stem_type="imagenet", image_size=32)).eval()
    data = image_dataset([0] * 6 + [255] * 6 + [128] * 6, [0] * 6 + [1] * 6 + [2] * 6, size=40)
    modules = hf_modular.decompose(model, data, samples_per_class=6, progress=False)
    assert sorted(modules) == sorted(LABELS)


def test_overwrite_never_reaches_files_hf_modular_did_not_write(tmp_path, parent, akamaster_checkpoint, capsys):
    checkpoint, _ = akamaster_checkpoint(blocks_per_stage=1, num_classes=10)
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    assert main(["import", str(checkpoint), "--output", str(mine), "--overwrite"]) == 1
    assert "replaces hf-modular's own outputs only" in capsys.readouterr().err
    (mine / "config.json").write_text('{"name": "my app settings"}')  # another program's config.json is mine too
    assert main(["import", str(checkpoint), "--output", str(mine), "--overwrite"]) == 1
    assert "replaces hf-modular's own outputs only" in capsys.readouterr().err
    assert main(["import", str(checkpoint), "--output", str(mine)]) == 1  # nor suggests --overwrite, refused anyway
    refusal = capsys.readouterr().err
    assert "holds files but no saved model or demo" in refusal and "Pass --overwrite" not in refusal
    output = tmp_path / "out"
    decompose_to_directory(parent, dark_bright_dataset(), output, samples_per_class=6, progress=False)
    (output / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds notes.txt, which is not a class module"):
        decompose_to_directory(parent, dark_bright_dataset(), output, samples_per_class=5, overwrite=True)
    assert (mine / "chapter1.tex").is_file() and (output / "notes.txt").is_file()


def test_a_folder_of_parquet_shards_is_read_by_the_split_its_names_say(tmp_path):
    dark_bright_dataset().to_parquet(str(tmp_path / "cifar10-train-00000-of-00001.parquet"))
    dark_bright_dataset().select(range(6)).to_parquet(str(tmp_path / "cifar10-test-00000-of-00001.parquet"))
    assert len(load_image_dataset(tmp_path, split="train")) == 18
    assert len(load_image_dataset(tmp_path, split="test")) == 6


def test_printed_errors_carry_no_url_query():
    from hf_modular.hub.client import without_url_queries

    text = "403 for url 'https://s3.example/lfs/abc?X-Amz-Signature=secret&X-Amz-Credential=me' while uploading"
    assert without_url_queries(text) == "403 for url 'https://s3.example/lfs/abc?...' while uploading"


def test_a_refused_decomposition_leaves_nothing_behind(tmp_path, parent):
    # "Nothing was written" holds to the file: no lock file in the user's folder, no directory made for nothing.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds notes.txt, which is not a class module"):
        decompose_to_directory(parent, dark_bright_dataset(), mine, samples_per_class=5, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match=r"Unknown classes \['kitten'\]"):
        decompose_to_directory(parent, "no-such-data", tmp_path / "new", classes=["dark", "kitten"])  # data not read
    assert not (tmp_path / "new").exists()
    with pytest.raises(TypeError, match=r"classes takes a list of label names, e.g. \['dark', ' mid'\]"):
        decompose_to_directory(parent, "no-such-data", tmp_path / "new", classes="dark, mid")
