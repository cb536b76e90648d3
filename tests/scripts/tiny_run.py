"""Decompose (both strategies), evaluate, fit and train a tiny seeded model on generated images, and have the main
process write what came out to OUT/n{num_processes}-*: every activation module's masks and head
(`-activation.safetensors`), every compact module's tensors (`-channel.safetensors`), the measured numbers
(`-measured.json`) and training's checkpoints (`-checkpoints/`). Run plainly and under `torchrun --nproc_per_node 2`
(tests/test_processes.py): nothing may depend on the number of processes beyond float rounding."""

import dataclasses
import json
import logging
import sys

import torch
from safetensors.torch import save_file
from tiny_setup import tiny_model_and_data

from hf_modular import ComposedModel
from hf_modular.decompose import decompose
from hf_modular.distributed import distributed_state, training_accelerator, warn_if_off_the_process_device
from hf_modular.evaluation import evaluate, evaluate_composition
from hf_modular.train import train

output = sys.argv[1]
# Not told `cpu=True` on a machine without a GPU: launched processes must find each other by themselves there, in
# the state that evaluation and decomposition create (first) and in training's Accelerator. (On a machine with one
# GPU, two processes cannot both hold it under NCCL: they share the CPU instead.)
state_processes = distributed_state(cpu=torch.cuda.is_available()).num_processes
accelerator = training_accelerator(cpu=torch.cuda.is_available())
prefix = f"{output}/n{accelerator.num_processes}"
model, data = tiny_model_and_data()


def save(tensors: dict[str, torch.Tensor], name: str) -> None:
    if accelerator.is_main_process:
        save_file({key: value.contiguous() for key, value in tensors.items()}, f"{prefix}-{name}.safetensors")


shared = dict(samples_per_class=15, batch_size=4, accelerator=accelerator, progress=False)
modules = decompose(model, data, **shared)
save(
    {
        f"{label}.{key}": value
        for label, module in modules.items()
        for key, value in module.state_dict().items()
        if key.endswith("mask") or key.startswith("fc.")
    },
    "activation",
)
compact = decompose(
    model, data, strategy="channel", prune_from="layer1", keep=0.5, distill_steps=5, distill_images=32, **shared
)
compact_tensors = {
    f"{label}.{key}": value for label, module in compact.items() for key, value in module.state_dict().items()
}
save(compact_tensors, "channel")

measured = {
    "parent": dataclasses.asdict(evaluate(model, data, batch_size=4, state=accelerator, progress=False)),
    "composition": dataclasses.asdict(
        evaluate_composition(model, modules, data, batch_size=4, state=accelerator, progress=False)
    ),
    "composed": dataclasses.asdict(
        evaluate(
            ComposedModel.from_modules(list(modules.values())), data, batch_size=4, state=accelerator, progress=False
        )
    ),
}
composed = ComposedModel.from_modules(modules.values())
measured["fit"] = composed.fit(data, images_per_class=10, batch_size=4, state=accelerator, progress=False)["heads"]
# 61 rows in batches of 20: the last global batch has one row, so one of two processes has an empty share.
# With checkpoints: every process saves its part, the main one commits; a rerun resumes from them (here: nothing
# left to do, so it restores the trained weights into a fresh model).
training = dict(epochs=2, batch_size=20, accelerator=accelerator, progress=False, output_dir=f"{prefix}-checkpoints")
history = train(model, data, eval_dataset=data, **training)
plain = evaluate(model, data, batch_size=4, state=accelerator, progress=False)
fresh, _ = tiny_model_and_data()
train(fresh, data, eval_dataset=data, **training)
measured["training"] = {
    "history": history.epochs,
    "plain_top1": plain.top1,
    "plain_top5": plain.top5,
    "weights": {name: tensor.double().flatten().tolist() for name, tensor in model.state_dict().items()},
    "resumed_weights_equal": all(
        torch.equal(value, fresh.state_dict()[name]) for name, value in model.state_dict().items()
    ),
    "record": model.config.training,
}
measured["state_processes"] = state_processes
# A model left off the processes' devices gives right numbers without the parallelism: the user hears of it.
warnings_seen: list[str] = []
handler = logging.Handler()
handler.emit = lambda record: warnings_seen.append(record.getMessage())
logging.getLogger("hf_modular").addHandler(handler)
warn_if_off_the_process_device(torch.nn.Linear(1, 1, device="meta"), accelerator, "evaluate")
measured["off_device_warnings"] = warnings_seen
if accelerator.is_main_process:
    with open(f"{prefix}-measured.json", "w") as file:
        json.dump(measured, file)
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group: a process that just exits can abort its peer (gloo)
