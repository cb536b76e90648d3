"""The examples run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hf_modular import ComposedModel
from tests.hub_server import DEFAULT_USER, client_env, hub_server_fixture  # noqa: F401

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--output", str(tmp_path / "model")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("max |logit difference| = 0.0e+00") == 3
    assert "pipeline on a random image: [{'label':" in result.stdout
    assert {p.name for p in (tmp_path / "model").iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }


def _run(script: str, *arguments: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *arguments], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_decompose_and_compose(tmp_path):
    out = _run("decompose_and_compose.py", "--epochs", "3", "--output", str(tmp_path / "modules"))
    assert "composed top-1:" in out and "a 0/1/7 classifier, no training:" in out
    assert len(list((tmp_path / "modules").glob("*-module"))) == 10


def test_compact_modules():
    out = _run("compact_modules.py", "--epochs", "3", "--distill-steps", "10")
    sizes = [line for line in out.splitlines() if line.startswith("module ")]
    assert len(sizes) == 10 and all("of the parent's" in line for line in sizes)
    assert "composed top-1:" in out
    shared = int(out.rsplit("once per module: ", 1)[1].split()[0])
    assert shared == 3 * 9  # stem, stage 1 and stage 2 run once for the ten modules


def test_publish_compose_and_replace_against_a_local_hub(hub_server):
    env = {**os.environ, **client_env(hub_server.url, hub_server.hf_home)}
    common = ["--namespace", DEFAULT_USER, "--epochs", "3", "--samples-per-class", "30"]
    healthy = _run("publish_modules.py", *common, "--parent-name", "digits", env=env)
    weak = _run("publish_modules.py", *common, "--parent-name", "digits-weak", "--weak-class", "8", env=env)
    healthy_repos = dict(line.split("\t")[:2] for line in healthy.strip().splitlines())
    weak_repos = dict(line.split("\t")[:2] for line in weak.strip().splitlines())
    assert healthy_repos["8"] == f"{DEFAULT_USER}/digits-8-module"
    assert weak_repos["8"] == f"{DEFAULT_USER}/digits-weak-8-module"
    repaired = f"{DEFAULT_USER}/digits-repaired"
    out = _run(
        "compose_and_replace.py",
        *weak_repos.values(),
        "--replace",
        f"8={healthy_repos['8']}",
        "--push-to",
        repaired,
        env=env,
    )
    assert "before" in out and "after" in out and f"published {repaired}" in out
    composed = ComposedModel.from_pretrained(repaired)
    assert composed.config.members[8]["source"] == healthy_repos["8"]  # the replaced module, pinned
    assert composed.config.members[8]["revision"]


def test_publish_modules_of_an_existing_parent(hub_server, tmp_path):
    from hf_modular import ModularResNetForImageClassification
    from hf_modular.demo import digits_dataset, digits_parent_config

    ModularResNetForImageClassification(digits_parent_config()).save_pretrained(tmp_path / "parent")
    digits_dataset()["train"].select(range(100)).to_parquet(str(tmp_path / "data" / "train.parquet"))
    env = {**os.environ, **client_env(hub_server.url, hub_server.hf_home)}
    arguments = ["--namespace", DEFAULT_USER, "--model", str(tmp_path / "parent"), "--dataset", str(tmp_path / "data")]
    out = _run("publish_modules.py", *arguments, "--samples-per-class", "5", env=env)
    assert f"{DEFAULT_USER}/parent-3-module" in out


def test_custom_strategy():
    out = _run("custom_strategy.py", "--epochs", "2")
    rows = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert set(rows) == {"whole-parent", "activation", "parent"}, out
