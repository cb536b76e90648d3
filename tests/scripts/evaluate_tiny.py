"""Evaluate, fit and train a tiny seeded model and its modules on generated images; the main process writes what it
measured to OUT/eval-n{num_processes}.json. Run plainly or under `torchrun --nproc_per_node 2`: the evaluation
numbers must not depend on the number of processes, nor the fitted heads, the training losses and the trained
weights (beyond float rounding); and training's per-epoch evaluation must equal a plain evaluation of its weights."""

import dataclasses
import json
import sys

from accelerate import Accelerator
from tiny_setup import tiny_model_and_data

from hf_modular import ComposedModel
from hf_modular.decompose import decompose
from hf_modular.evaluation import evaluate, evaluate_composition
from hf_modular.train import train

output = sys.argv[1]
accelerator = Accelerator(cpu=True)
model, data = tiny_model_and_data()
modules = decompose(model, data, samples_per_class=15, batch_size=4, accelerator=accelerator, progress=False)

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
history = train(model, data, eval_dataset=data, epochs=2, batch_size=20, accelerator=accelerator, progress=False)
plain = evaluate(model, data, batch_size=4, state=accelerator, progress=False)
measured["training"] = {
    "history": history.epochs,
    "plain_top1": plain.top1,
    "plain_top5": plain.top5,
    "weights": {name: tensor.double().flatten().tolist() for name, tensor in model.state_dict().items()},
}
if accelerator.is_main_process:
    with open(f"{output}/eval-n{accelerator.num_processes}.json", "w") as file:
        json.dump(measured, file)
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group: a process that just exits can abort its peer (gloo)
