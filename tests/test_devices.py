"""Every entry point runs with the parent in any floating dtype and on any device.

Without a GPU, float64 and bfloat16 stand in for a device: an input left in float32 fails exactly where an input
left on the CPU would fail on a GPU. Where CUDA is present the same tests run on it too (`pytest -m gpu`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import hf_modular
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.decompose import decompose_to_directory
from hf_modular.distributed import full_float32
from hf_modular.emissions import measure_compute
from hf_modular.evaluation import evaluate, evaluate_composition
from hf_modular.train import train
from tests.test_decompose import image_dataset, tiny_config

LABELS = ["dark", "bright", "mid"]
GREYS = [20, 235, 128]


def _data(per_class: int, seed: int, size: int = 8):
    return image_dataset(GREYS * per_class, [0, 1, 2] * per_class, size=size, noise=25, seed=seed, names=LABELS)


CASES = [
    pytest.param("cpu", torch.float64, id="cpu-float64"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cuda", torch.float32, id="cuda-float32", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=pytest.mark.gpu),
]


def _where(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@pytest.mark.parametrize(("device", "dtype"), CASES)
def test_the_whole_pipeline_follows_the_parents_device_and_dtype(device, dtype, tmp_path):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    parent = ModularResNetForImageClassification(tiny_config(id2label=dict(enumerate(LABELS)))).eval()
    parent.to(device=device, dtype=dtype)
    where = (torch.device(device, 0) if device == "cuda" else torch.device(device), dtype)
    data, held_out = _data(8, seed=0), _data(4, seed=1)

    assert evaluate(parent, held_out, progress=False).count == 12
    built = {}
    for strategy, options in (("activation", {}), ("channel", {"distill_steps": 2, "distill_images": 12})):
        built[strategy] = modules = hf_modular.decompose(
            parent, data, samples_per_class=4, strategy=strategy, progress=False, **options
        )
        assert _where(parent) == where, f"{strategy} moved the parent"
        for module in modules.values():
            assert _where(module) == where, f"{strategy} built a module elsewhere"
        result = evaluate_composition(parent, modules, held_out, progress=False)
        assert result.composed.count == 12

    composed = ComposedModel.from_modules(list(modules.values()))
    pixels = torch.rand(2, 3, 8, 8)  # [0, 1] float32 images on the CPU: the composition moves them
    assert composed(pixels).logits.shape == (2, 3)
    assert composed.module_logits(pixels).shape == (2, 3, 2)
    assert len(composed.predict((pixels * 255).to(torch.uint8))) == 2
    composed.calibrate(data, progress=False)
    assert evaluate(composed, held_out, progress=False).count == 12
    composed.fit(data, images_per_class=4, progress=False)
    assert evaluate(composed, held_out, progress=False).count == 12
    assert all(_where(member) == where for member in composed.members)

    adapted = hf_modular.continuous_learning(list(built["activation"].values()), data, progress=False)
    assert all(_where(module) == where for module in adapted)

    report = decompose_to_directory(
        parent, data, tmp_path / "out", eval_dataset=held_out, samples_per_class=4, progress=False
    )
    assert report["evaluation"]["images"] == 12
    assert _where(parent) == where

    history = train(parent, data, eval_dataset=held_out, epochs=1, batch_size=8, progress=False)
    assert history.final["top1"] >= 0 and _where(parent) == where


def test_compact_modules_of_a_float16_parent_recover_in_float32_and_stay_float16():
    """In float16 Adam's epsilon (1e-8) rounds to 0, so training the module in its own dtype made NaN weights."""
    torch.manual_seed(0)
    parent = ModularResNetForImageClassification(tiny_config(id2label=dict(enumerate(LABELS)))).eval()
    parent.to(torch.float16)
    modules = hf_modular.decompose(
        parent,
        _data(8, seed=0),
        samples_per_class=4,
        strategy="channel",
        distill_steps=20,
        distill_images=12,
        progress=False,
    )
    for label, module in modules.items():
        assert _where(module)[1] == torch.float16, label
        weights = [value for value in module.state_dict().values() if value.is_floating_point()]
        assert all(bool(torch.isfinite(value).all()) for value in weights), label
        assert math.isfinite(module.config.provenance.details["distillation_loss"]), label


def test_fp16_mixed_precision_refuses_a_float16_model_before_training():
    """Refused before an Accelerator exists: this process's precision (fixed once per process) is not touched."""
    from accelerate.state import AcceleratorState

    model = ModularResNetForImageClassification(tiny_config(id2label=dict(enumerate(LABELS)))).half()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    state_before = dict(AcceleratorState._shared_state)  # Accelerate's process-wide state (empty until one exists)
    with pytest.raises(ValueError, match="weights are already float16"):
        train(model, _data(2, seed=0), epochs=1, mixed_precision="fp16", progress=False)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert dict(AcceleratorState._shared_state) == state_before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16's loss scaler runs on GPUs only")
def test_the_schedule_advances_only_with_the_steps_fp16_takes(tmp_path):
    """The loss scaler halves its scale at each step it skips (inf gradients); a skipped step must not advance the
    cosine schedule. It starts at 2**30 here, so the first steps overflow for sure. A subprocess: Accelerate fixes
    the precision once per process."""
    code = f"""
        from accelerate import Accelerator
        from accelerate.utils import GradScalerKwargs
        from hf_modular import ModularResNetForImageClassification
        from hf_modular.train import train
        from tests.test_devices import LABELS, _data, tiny_config
        model = ModularResNetForImageClassification(tiny_config(id2label=dict(enumerate(LABELS)))).cuda()
        accelerator = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=2.0**30)])
        train(model, _data(20, seed=0), epochs=2, batch_size=6, accelerator=accelerator, progress=False,
              output_dir={str(tmp_path)!r})
    """
    root = Path(__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=root, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "checkpoint-2" / "state.json").read_text())  # the scaler's and schedule's state
    skipped = round(math.log2(2.0**30 / saved["scaler"]["scale"]))  # 20 steps: too few to grow back (every 2000)
    assert skipped > 0 and saved["scheduler"]["last_epoch"] == 20 - skipped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_an_energy_estimate_after_gpu_work_says_the_gpu_is_not_counted():
    # Without codecarbon the estimate is the CPU's: a GPU-bound run would look nearly free.
    with measure_compute(use_codecarbon=False) as record:
        torch.ones(4, device="cuda").sum().item()
    assert "the GPU's draw is not counted" in record.method
    assert record.details["gpu_not_counted"] == torch.cuda.get_device_name()


def test_the_statistics_pass_precision_switch_turns_tf32_off_and_restores_it():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with full_float32():
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def test_cli_runs_models_under_mixed_precision_and_records_it(tmp_path):
    """`--mixed-precision bf16` on train, decompose and evaluate, in one fresh process (Accelerate fixes the precision
    once per process, and all three ask for the same); the modules record it next to the parent's dtype."""
    _data(10, seed=0, size=32).to_parquet(str(tmp_path / "data" / "train.parquet"))
    _data(4, seed=1, size=32).to_parquet(str(tmp_path / "data" / "test.parquet"))
    data, precision = ["--dataset", str(tmp_path / "data")], ["--mixed-precision", "bf16"]
    commands = [
        ["train", *data, "--epochs", "1", "--batch-size", "10", *precision, "--output", str(tmp_path / "parent")],
        ["decompose", str(tmp_path / "parent"), *data, "--eval-split", "test", "--samples-per-class", "4", *precision,
         "--output", str(tmp_path / "modules")],
        ["evaluate", str(tmp_path / "parent"), *data, *precision, "--json"],
    ]  # fmt: skip
    code = f"from hf_modular.cli import main\nfor argv in {commands!r}:\n    assert main(['-q', *argv]) == 0\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = done.stdout[done.stdout.rfind("\n{") + 1 :]  # the last command's JSON, after what the others printed
    assert json.loads(evaluated)["count"] == 12
    module = ModularResNetForImageClassification.from_pretrained(tmp_path / "modules" / "dark-module")
    compute = module.config.provenance.compute
    assert (compute["mixed_precision"], compute["dtype"]) == ("bf16", "float32")
    report = json.loads((tmp_path / "modules" / "decomposition.json").read_text())
    assert report["evaluation"]["images"] == 12
    # Autocast can move the statistics pass's signs: a rerun without it does not take these modules as its own.
    parent = ModularResNetForImageClassification.from_pretrained(tmp_path / "parent")
    with pytest.raises(FileExistsError, match="not built by this decomposition"):
        decompose_to_directory(parent, tmp_path / "data", tmp_path / "modules", samples_per_class=4, progress=False)
