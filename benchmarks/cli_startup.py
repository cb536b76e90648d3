"""How long `hf-modular --help` takes to answer, next to what it must import, measured in one run.

    python benchmarks/cli_startup.py [--repeats 5]

Each row is a fresh interpreter (median wall time of `--repeats` runs, interleaved so that load on the machine hits
every row alike); the ratio column divides by `import torch` measured in the same run, since these machines are
shared and absolute times move from run to run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python (empty)": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import transformers' PreTrainedConfig": [sys.executable, "-c", "from transformers import PreTrainedConfig"],
    "import hf_modular": [sys.executable, "-c", "import hf_modular"],
    "hf-modular --help": [sys.executable, "-m", "hf_modular.cli", "--help"],
    "hf-modular nonsense (argument error)": [sys.executable, "-m", "hf_modular.cli", "nonsense"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=False)
            times[name].append(time.perf_counter() - started)
    torch_seconds = statistics.median(times["import torch"])
    print(f"| command | median wall time (s, {args.repeats} runs) | / import torch |")
    print("|---|---|---|")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median:.2f} | {median / torch_seconds:.2f} |")


if __name__ == "__main__":
    main()
