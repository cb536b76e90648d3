"""One process or two (`torchrun --nproc_per_node 2`, on the CPU over gloo) give the same modules and the same
numbers: decomposition with both strategies, evaluation, fitting and training. `scripts/tiny_run.py` does all of it
once per process count (starting interpreters is most of the cost); each test below compares one part."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "tiny_run.py"
LAUNCHER = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The directory where the 1-process and the 2-process runs wrote their `n1-*` and `n2-*` files."""
    output = tmp_path_factory.mktemp("processes")
    for command in ([sys.executable, str(SCRIPT)], [*LAUNCHER, str(SCRIPT)]):
        done = subprocess.run([*command, str(output)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    return output


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without a GPU")
def test_launched_processes_share_the_work_without_being_told_cpu(runs):
    """The script does not pass `cpu=True` where there is no GPU. Accelerate would then count 1 process in each, and
    each would do the whole job alone, writing `n1-*`: only the main one of 2 processes writes, as `n2-*`."""
    parts = ("activation.safetensors", "channel.safetensors", "checkpoints", "measured.json")
    assert sorted(path.name for path in runs.iterdir()) == [f"n{count}-{part}" for count in (1, 2) for part in parts]
    two = json.loads((runs / "n2-measured.json").read_text())
    assert two["state_processes"] == 2 and two["training"]["record"]["processes"] == 2


def test_same_masks_and_heads_on_one_and_two_processes(runs):
    """The statistics pass combines booleans: bit-identical masks, and the same heads."""
    one, two = load_file(runs / "n1-activation.safetensors"), load_file(runs / "n2-activation.safetensors")
    assert one.keys() == two.keys()
    assert any(key.endswith("mask") for key in one)
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_same_compact_modules_on_one_and_two_processes(runs):
    """Scores are gathered in row order and classes are split across processes: the same channels are kept, and the
    distilled weights agree up to the float rounding of different thread counts."""
    one, two = load_file(runs / "n1-channel.safetensors"), load_file(runs / "n2-channel.safetensors")
    assert one.keys() == two.keys() and any(key.endswith("layer2.0.conv1.weight") for key in one)
    for key in one:
        assert one[key].shape == two[key].shape, key
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)


def test_evaluation_fitting_and_training_are_the_same_on_one_and_two_processes(runs):
    one, two = (json.loads((runs / f"n{count}-measured.json").read_text()) for count in (1, 2))
    for measured in (one, two):  # training's own evaluation after its epoch is a plain evaluation of its weights
        assert measured["parent"]["count"] == 61
        epoch = measured["training"]["history"][-1]
        assert (epoch["top1"], epoch["top5"]) == (
            measured["training"]["plain_top1"],
            measured["training"]["plain_top5"],
        )
    # Two processes each see a share of the rows; summed, they measure exactly what one process does.
    assert one["parent"] == two["parent"]
    assert one["composition"] == two["composition"]
    assert one["composed"] == two["composed"]
    for label, head in one["fit"].items():  # fitting shares the images too, and fits the same heads
        assert head["bias"] == pytest.approx(two["fit"][label]["bias"], abs=1e-4)
        assert head["weight"] == pytest.approx(two["fit"][label]["weight"], abs=1e-4)
    # Training shares each global batch, normalises over all of it and averages the gradients: the same steps.
    trained_once, trained_twice = one["training"], two["training"]
    for epoch_once, epoch_twice in zip(trained_once["history"], trained_twice["history"], strict=True):
        assert epoch_once["loss"] == pytest.approx(epoch_twice["loss"], rel=1e-5)
        assert (epoch_once["top1"], epoch_once["top5"]) == (epoch_twice["top1"], epoch_twice["top5"])
    for name, weights in trained_once["weights"].items():
        assert weights == pytest.approx(trained_twice["weights"][name], rel=1e-4, abs=1e-5), name
    # Checkpoints: the last epoch's, named by the state file, and a rerun (with the same Accelerator, which prepared
    # the first model too) restores exactly the trained weights.
    for count in (1, 2):
        checkpoints = runs / f"n{count}-checkpoints"
        assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-2", "training_state.json"]
        files = sorted(path.name for path in (checkpoints / "checkpoint-2").iterdir())
        assert files == ["model.safetensors", "optimizer.safetensors", "state.json"]  # no pickle to load
    assert trained_once["resumed_weights_equal"] and trained_twice["resumed_weights_equal"]


def test_a_model_off_the_processes_devices_is_named_on_several_processes_only(runs):
    one, two = (json.loads((runs / f"n{count}-measured.json").read_text()) for count in (1, 2))
    assert one["off_device_warnings"] == []
    [warning] = two["off_device_warnings"]  # what the main process logged
    assert "evaluate runs on 2 processes, but the model is on meta" in warning and "model.to(" in warning
