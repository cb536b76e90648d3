"""Composition speed: the parent, ten composed modules run one after another, and the same ten modules stacked and
run as one vectorised computation (`torch.func.stack_module_state` + `vmap`), in one run.

    python benchmarks/compose_speed.py [--batch-sizes 8 128] [--repeats 5]

Modules come from the shared pretrained CIFAR ResNets (../shared), decomposed with a few samples per class (the
timing does not depend on the masks' content). Times interleave the variants; read the ratios.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch.func import functional_call, vmap

import hf_modular  # noqa: F401
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.convert import import_cifar_resnet
from hf_modular.data import load_image_dataset
from hf_modular.decompose import decompose

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}


def stacked_runner(modules: list[ModularResNetForImageClassification]):
    """All modules as one vmapped call: every site carries a mask (ones where a module has none) so states stack."""
    shapes = modules[0].site_shapes()
    config = copy.deepcopy(modules[0].config)
    config.mask_shapes = {site: list(shape) for site, shape in shapes.items()}
    template = ModularResNetForImageClassification(config).eval().to("meta")
    states = []
    for module in modules:
        state = dict(module.state_dict())
        for site, shape in shapes.items():
            state.setdefault(f"{site}.mask", torch.ones(shape, dtype=torch.bool))
        states.append(state)
    stacked = {key: torch.stack([state[key] for state in states]) for key in states[0]}

    def run(pixel_values: torch.Tensor) -> torch.Tensor:
        call = vmap(lambda state: functional_call(template, state, (pixel_values,)).logits)
        return call(stacked).transpose(0, 1)  # (B, M, 2)

    return run


def seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 128])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"This benchmark needs the shared checkpoints and data at {SHARED}.")
    train = load_image_dataset(SHARED / "data" / "cifar10-jpeg" / "train.parquet", split="train")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    print(
        "| model | batch | parent img/s | 10 modules, loop img/s | 10 modules, vmap img/s | loop/parent | vmap/loop |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, checkpoint in CHECKPOINTS.items():
        parent = import_cifar_resnet(SHARED / "models" / "akamaster-cifar-resnet" / checkpoint)
        modules = decompose(parent, train, samples_per_class=20, progress=False)
        composed = ComposedModel.from_modules(list(modules.values()))
        stacked = stacked_runner(list(modules.values()))
        for batch_size in args.batch_sizes:
            images = torch.rand(batch_size, 3, 32, 32)
            config = composed.members[0].config
            parent_input = (images - torch.tensor(config.image_mean)[:, None, None]) / torch.tensor(config.image_std)[
                :, None, None
            ]
            prepared = parent_input  # every module of one parent shares its preprocessing
            loop_logits, vmap_logits = composed.module_logits(images), stacked(prepared)
            assert torch.allclose(loop_logits, vmap_logits, atol=1e-4), "vmap and loop disagree"
            timings = {"parent": [], "loop": [], "vmap": []}
            for _ in range(args.repeats):
                timings["parent"].append(seconds(parent, parent_input))
                timings["loop"].append(seconds(composed.module_logits, images))
                timings["vmap"].append(seconds(stacked, prepared))
            speed = {key: batch_size / statistics.median(values) for key, values in timings.items()}
            print(
                f"| {name} | {batch_size} | {speed['parent']:.0f} | {speed['loop']:.0f} | {speed['vmap']:.0f} "
                f"| {speed['loop'] / speed['parent']:.2f} | {speed['vmap'] / speed['loop']:.2f} |"
            )


if __name__ == "__main__":
    main()
