"""How long the command line takes to answer, next to what it imports, measured in one run.

    python benchmarks/cli_startup.py [--repeats 5]

`hf-modular --help`, `--version` and an unknown command load neither torch nor transformers; a command's own
`--help` loads the command (its options show the library's defaults), and `info` reads the model through
transformers.

Each row is a fresh interpreter (median wall time of `--repeats` runs, interleaved so that load on the machine hits
every row alike); the ratio column divides by `import torch` measured in the same run, since these machines are
shared and absolute times move from run to run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hf_modular import ModularResNetConfig, ModularResNetForImageClassification

CLI = [sys.executable, "-m", "hf_modular.cli"]


def commands(model: Path) -> dict[str, tuple[list[str], int]]:
    """Row name -> (command, the exit status it must end with: a failing command would look fast)."""
    return {
        "python (empty)": ([sys.executable, "-c", "pass"], 0),
        "import torch": ([sys.executable, "-c", "import torch"], 0),
        "import transformers' PreTrainedConfig": (
            [sys.executable, "-c", "from transformers import PreTrainedConfig"],
            0,
        ),
        "import hf_modular": ([sys.executable, "-c", "import hf_modular"], 0),
        "hf-modular --help": ([*CLI, "--help"], 0),
        "hf-modular nonsense (argument error)": ([*CLI, "nonsense"], 2),
        "hf-modular info --help (loads the command)": ([*CLI, "info", "--help"], 0),
        "hf-modular info DIR (reads the model)": ([*CLI, "info", str(model)], 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "resnet20"
        ModularResNetForImageClassification(ModularResNetConfig.from_preset("modular_resnet20")).save_pretrained(model)
        rows = commands(model)
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, (command, status) in rows.items():
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                times[name].append(time.perf_counter() - started)
                if done.returncode != status:
                    raise SystemExit(f"{name}: exit status {done.returncode}, expected {status}\n{done.stderr}")
    torch_seconds = statistics.median(times["import torch"])
    print(f"| command | median wall time (s, {args.repeats} runs) | / import torch |")
    print("|---|---|---|")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median:.2f} | {median / torch_seconds:.2f} |")


if __name__ == "__main__":
    main()
