"""The README runs as written, top to bottom: every `python` and `bash` block, in order, in one working directory
beside `../shared`, against a local Hub (the test server, with the README's `my-org` organisation).

Size switch: `HF_MODULAR_README_SIZE=small` (the default here) swaps the README's long runs for short ones (`SMALL`:
fewer samples, epochs and evaluation images, a 200-image CIFAR-10 for training); `full` runs the blocks exactly as
printed. A block preceded by `<!-- readme-test: skip: why -->` is not run; the README says there what it needs.
The test is slow (minutes): it runs by default in CI (`CI=true`) and locally with `HF_MODULAR_SLOW=1`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest

from tests.hub_server import DEFAULT_USER, client_env, hub_server_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SKIP_MARKER = re.compile(r"<!-- readme-test: skip: (.+?) -->")
TINY_CIFAR = "tiny-cifar10"  # the first 200 training and test images, for the training blocks at the small size

# README text -> its stand-in at the small size. Each must occur in the README (checked), so none goes stale.
SMALL = {
    "samples_per_class=1000": "samples_per_class=20",
    "samples_per_class=100,": "samples_per_class=20,",
    "samples_per_class=256, distill_steps=300": "samples_per_class=20, distill_steps=5, distill_images=200",
    "--split test\n": "--split test --limit 200\n",
    "--cpu --output modules ": "--cpu --samples-per-class 10 --output modules ",
    "--eval-split test --samples-per-class 1000": "--eval-split test --eval-limit 200 --samples-per-class 20",
    "--samples-per-class 256 ": "--samples-per-class 20 --distill-steps 5 --distill-images 200 ",
    "--output hub-parent-modules \\": "--output hub-parent-modules --samples-per-class 20 \\",
    "images_per_class=100,": "images_per_class=10,",
    "--images-per-class 100 ": "--images-per-class 10 ",
    "evaluate pair --dataset ../shared/data/cifar10-jpeg/test.parquet ": (
        "evaluate pair --dataset ../shared/data/cifar10-jpeg/test.parquet --limit 200 "
    ),
    "--dataset ../shared/data/cifar10-jpeg --preset modular_resnet20 --epochs 30": (
        f"--dataset {TINY_CIFAR} --preset modular_resnet20 --epochs 1"
    ),
    'data = "../shared/data/cifar10-jpeg"': f'data = "{TINY_CIFAR}"',
    "epochs=30, output_dir": "epochs=1, output_dir",
}


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip: str | None  # the reason given in the README, for a block that is not run


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of the README, in order."""
    blocks, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        marker = SKIP_MARKER.match(lines[index - 1]) if index else None
        code = "\n".join(lines[index + 1 : end]) + "\n"
        blocks.append(Block(index + 1, fence.group(1), code, marker.group(1) if marker else None))
        index = end + 1
    return blocks


def runner(blocks: list[Block], small: bool) -> str:
    """One Python script that runs the blocks in order: python blocks in one namespace (later blocks use what
    earlier ones made), bash blocks through bash -e; each announces its README line first."""
    parts = [
        "import os, signal, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "groups = []\n"
        "def bash(code, line):\n"
        "    process = subprocess.Popen(['bash', '-e', '-c', code], start_new_session=True)\n"
        "    groups.append(process.pid)\n"
        "    if process.wait():\n"
        "        sys.exit(f'README line {line}: the bash block failed (exit {process.returncode})')\n"
        "try:\n"
        "    pass\n"
    ]
    for block in blocks:
        if block.language not in ("python", "bash") or block.skip:
            continue
        code = block.code
        if small:
            for old, new in SMALL.items():
                code = code.replace(old, new)
        announce = f"print(f'--- README line {block.line} at {{time.perf_counter() - started:.0f}} s', flush=True)\n"
        body = announce + (code if block.language == "python" else f"bash({code!r}, {block.line})\n")
        parts.append("".join(f"    {line}\n" for line in body.splitlines()))
    parts.append(  # background processes a block started (the README's own Hub server) end with the run
        "finally:\n"
        "    for group in groups:\n"
        "        try:\n"
        "            os.killpg(group, signal.SIGTERM)\n"
        "        except ProcessLookupError:\n"
        "            pass\n"
    )
    return "".join(parts)


def test_the_readme_parses_into_runnable_blocks():
    text = (ROOT / "README.md").read_text()
    blocks = readme_blocks(text)
    run = [block for block in blocks if block.language in ("python", "bash") and not block.skip]
    assert len(run) >= 20
    stale = [old for old in SMALL if old not in text]
    assert not stale, f"small-size substitutions whose README text is gone: {stale}"
    for block in blocks:  # a block skipped because a test runs it names a test that exists
        for path, name in re.findall(r"(tests/\w+\.py)::(\w+)", block.skip or ""):
            assert f"def {name}(" in (ROOT / path).read_text(), f"README line {block.line}: no {path}::{name}"
    for block in run:
        if block.language == "python":
            compile(block.code, f"README.md line {block.line}", "exec")
    compile(runner(blocks, small=True), "runner", "exec")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the README's examples read the shared data at {SHARED}")
def test_the_readme_runs_top_to_bottom(tmp_path, hub_server):
    hub_server.orgs["my-org"] = {DEFAULT_USER}
    project = tmp_path / "project"  # the README's working directory: a clone's root, with ../shared beside it
    project.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    for name in ("tests", "examples", "benchmarks", "model_cards"):
        (project / name).symlink_to(ROOT / name)
    small = os.environ.get("HF_MODULAR_README_SIZE", "small") == "small"
    if small:
        for split in ("train", "test"):
            rows = datasets.load_dataset(
                "parquet", data_files={split: str(SHARED / "data" / "cifar10-jpeg" / f"{split}.parquet")}, split=split
            )
            rows.select(range(200)).to_parquet(str(project / TINY_CIFAR / f"{split}.parquet"))
    bin_dir = tmp_path / "bin"  # `hf-modular` is this checkout's, whatever else is installed
    bin_dir.mkdir()
    (bin_dir / "hf-modular").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hf_modular.cli "$@"\n')
    (bin_dir / "hf-modular").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {
        **os.environ,
        **client_env(hub_server.url, hub_server.hf_home),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    (tmp_path / "readme.py").write_text(runner(readme_blocks((ROOT / "README.md").read_text()), small))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "readme.py")], cwd=project, env=env, capture_output=True, text=True,
        timeout=3000,
    )  # fmt: skip
    (tmp_path / "readme.log").write_text(result.stdout)  # each block's start time, to see where the minutes go
    where = [line for line in result.stdout.splitlines() if line.startswith("--- README line")]
    assert result.returncode == 0, f"{where[-1] if where else 'before the first block'}:\n{result.stderr[-6000:]}"
