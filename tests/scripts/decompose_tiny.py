"""Decompose a tiny seeded model on generated images; the main process writes every module's masks and head (or,
with `channel` as the second argument, every compact module's tensors) to OUT/n{num_processes}.safetensors. Run
plainly or under `torchrun --nproc_per_node 2`."""

import sys

from accelerate import Accelerator
from safetensors.torch import save_file
from tiny_setup import tiny_model_and_data

from hf_modular.decompose import decompose

output = sys.argv[1]
strategy = sys.argv[2] if len(sys.argv) > 2 else "activation"
accelerator = Accelerator(cpu=True)
model, data = tiny_model_and_data()
options = dict(prune_from="layer1", keep=0.5, distill_steps=5, distill_images=32) if strategy == "channel" else {}
modules = decompose(
    model,
    data,
    samples_per_class=15,
    batch_size=4,
    accelerator=accelerator,
    progress=False,
    strategy=strategy,
    **options,
)
tensors = {
    f"{label}.{key}": value.contiguous()
    for label, module in modules.items()
    for key, value in module.state_dict().items()
    if strategy == "channel" or key.endswith("mask") or key.startswith("fc.")
}
if accelerator.is_main_process:
    save_file(tensors, f"{output}/n{accelerator.num_processes}.safetensors")
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group: a process that just exits can abort its peer (gloo)
