"""The `hf-modular` command: called in-process through `main`, plus one run of the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as transformers_logging

import hf_modular
from hf_modular import ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.models import CIFAR10_LABELS


@pytest.fixture
def saved(tmp_path, tiny_config) -> tuple[Path, ModularResNetForImageClassification]:
    model = ModularResNetForImageClassification(tiny_config)
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


def _assert_one_error_line(stderr: str, command: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"hf-modular {command}: error: ")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    # Besides the error, at most the hint about --debug.
    hint = f"(run `hf-modular --debug {command} ...` for the full traceback)"
    assert [line for line in lines if line != errors[0]] in ([], [hint])


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-modular {version('hf_modular')}"
    assert hf_modular.__version__ == version("hf_modular")


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: hf-modular" in capsys.readouterr().err


def test_info_prints_labels_and_parameter_count(capsys, saved):
    directory, model = saved
    assert main(["info", str(directory)]) == 0
    out = capsys.readouterr().out
    for label in ("cat", "dog", "bird"):
        assert label in out
    parameters = sum(p.numel() for p in model.parameters())
    assert any(line.split()[:2] == ["parameters", str(parameters)] for line in out.splitlines()), out


def test_info_json(capsys, saved):
    directory, model = saved
    assert main(["info", str(directory), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"] == ["cat", "dog", "bird"]
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["layers"] == [1, 1] and summary["widths"] == [4, 8]
    assert summary["sites"] == len(model.sites())
    assert summary["masked_sites"] == 0
    assert summary["input"] == [3, 32, 32]


def test_import_writes_a_loadable_directory(capsys, tmp_path, akamaster_checkpoint):
    import hashlib

    path, reference = akamaster_checkpoint(blocks_per_stage=3)
    output = tmp_path / "imported"
    assert main(["import", str(path), "--output", str(output), "--license", "bsd-2-clause"]) == 0
    assert str(output) in capsys.readouterr().out
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    model = ModularResNetForImageClassification.from_pretrained(output)
    assert model.config.preset == "modular_resnet20"
    assert [model.config.id2label[i] for i in range(10)] == list(CIFAR10_LABELS)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference(x), atol=1e-5, rtol=1e-5)
    # Where the weights came from travels with them: the file by name and hash, and the license given.
    origin = model.config.origin
    assert origin["source"] == path.name and origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert origin["license"] == "bsd-2-clause" and "akamaster" in origin["format"]
    assert main(["info", str(output)]) == 0
    assert f"imported from {path.name}" in capsys.readouterr().out
    assert main(["card", str(output)]) == 0  # the card takes the recorded license unless told another
    card = (output / "README.md").read_text()
    assert "license: bsd-2-clause" in card and origin["sha256"] in card and "## Origin" in card


def test_quiet_import_with_labels(tmp_path, akamaster_checkpoint):
    path, _ = akamaster_checkpoint(blocks_per_stage=1, num_classes=3)
    output = tmp_path / "imported"
    progress_bars = transformers_logging.is_progress_bar_enabled()
    try:
        assert main(["-q", "import", str(path), "--output", str(output), "--labels", "red,green,blue"]) == 0
        assert not transformers_logging.is_progress_bar_enabled()
    finally:  # -q switches transformers' progress bars off for the whole process
        if progress_bars:
            transformers_logging.enable_progress_bar()
    model = ModularResNetForImageClassification.from_pretrained(output)
    assert model.config.id2label == {0: "red", 1: "green", 2: "blue"}


def test_import_with_wrong_label_count_fails_cleanly(capsys, tmp_path, akamaster_checkpoint):
    path, _ = akamaster_checkpoint(blocks_per_stage=1)
    output = tmp_path / "imported"
    assert main(["import", str(path), "--output", str(output), "--labels", "a,b"]) == 1
    _assert_one_error_line(capsys.readouterr().err, "import", "10 outputs but 2 labels")
    assert not output.exists()


def test_info_on_a_missing_path_fails_cleanly(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    assert main(["info", str(missing)]) == 1
    _assert_one_error_line(capsys.readouterr().err, "info", str(missing))


def test_import_of_a_missing_checkpoint_fails_cleanly(capsys, tmp_path):
    missing = tmp_path / "no-such-file.th"
    output = tmp_path / "out"
    assert main(["import", str(missing), "--output", str(output)]) == 1
    _assert_one_error_line(capsys.readouterr().err, "import", str(missing))
    assert not output.exists()


@pytest.mark.parametrize("command", ["decompose", "compose", "train", "evaluate"])
def test_each_option_shows_its_default_at_most_once_and_never_none(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text
    assert text.count("(default: every class)") == (command == "decompose")
    for line in text.split(" --"):
        assert line.count("(default") <= 1, line


def test_a_strategy_option_is_checked_before_the_model_loads(capsys, tmp_path):
    absent = str(tmp_path / "no-such-model")
    arguments = ["decompose", absent, "--dataset", "x.parquet", "--output", str(tmp_path / "out"), "--delta", "nan"]
    assert main(arguments) == 1
    _assert_one_error_line(capsys.readouterr().err, "decompose", "delta must be a number >= 0, got nan")


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "import", str(tmp_path / "absent.th"), "--output", str(tmp_path / "out")])


def test_ctrl_c_while_the_command_starts_says_so_without_a_traceback():
    import signal

    # -X importtime reports each module once imported: once torch is, main() is still loading the command's code
    # (transformers, datasets, ours: seconds more).
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "hf_modular.cli", "info", "no-such-model"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in process.stderr:
            if line.split("|")[-1].strip() == "torch":
                break
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=120)[1]
    finally:
        process.kill()
    messages = [line for line in stderr.splitlines() if not line.startswith("import time:")]
    assert process.returncode == 130, stderr
    assert messages == ["hf-modular: interrupted while starting; nothing was done."]


def test_ctrl_c_before_any_module_was_saved_says_nothing_was_kept(tmp_path):
    from argparse import Namespace

    from hf_modular.commands import interruption_hint

    hint = interruption_hint(Namespace(command="decompose", output=str(tmp_path / "modules")))
    assert "No module had been saved yet" in hint and "kept" not in hint


def test_console_script_help():
    script = Path(sys.executable).with_name("hf-modular")
    executable = str(script) if script.exists() else shutil.which("hf-modular")
    if executable is None:
        pytest.skip("the hf-modular console script is not installed")
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: hf-modular")
    for command in ("info", "import", "evaluate"):
        assert command in result.stdout


def test_a_command_shows_its_own_bars_and_not_the_libraries(tmp_path, saved):
    """Default: hf_modular's bar for the evaluation, none of transformers' per-file bars; -q: none at all;
    HF_HUB_DISABLE_PROGRESS_BARS=1: none of hf_modular's either (huggingface_hub's switch)."""
    import os
    import subprocess
    import sys

    from tests.test_decompose import image_dataset

    directory, model = saved
    names = [model.config.id2label[i] for i in range(3)]
    image_dataset([0, 128, 255] * 4, [0, 1, 2] * 4, size=model.config.image_size, names=names).to_parquet(
        str(tmp_path / "test.parquet")
    )
    command = [sys.executable, "-m", "hf_modular.cli"]
    evaluate = ["evaluate", str(directory), "--dataset", str(tmp_path / "test.parquet")]

    runs = [([], {}), (["-q"], {}), ([], {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}), (["-v"], {})]
    processes = [  # side by side: each spends its first seconds importing, on one core
        subprocess.Popen(
            [*command, *flags, *evaluate], stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
        )
        for flags, env in runs
    ]  # fmt: skip
    try:
        default, quiet, switched_off, verbose = (process.communicate(timeout=600)[1] for process in processes)
    finally:  # a timeout leaves no process running
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0, 0, 0], default + quiet + switched_off + verbose
    assert "evaluation" in default and "Loading weights" not in default
    assert "evaluation" not in quiet
    assert "evaluation" not in switched_off
    assert "Loading weights" in verbose


def test_under_a_launcher_only_the_main_process_prints_its_steps(monkeypatch):
    import logging

    from hf_modular import console

    monkeypatch.setenv("RANK", "1")  # what accelerate launch / torchrun give every process but the first
    console.configure(console.DEFAULT)
    assert logging.getLogger("hf_modular").level == logging.WARNING  # its warnings still show
    monkeypatch.setenv("RANK", "0")
    console.configure(console.DEFAULT)
    assert logging.getLogger("hf_modular").level == logging.INFO
