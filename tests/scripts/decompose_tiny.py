"""Decompose a tiny seeded model on generated images; the main process writes every module's masks and head (or,
with `channel` as the second argument, every compact module's tensors) to OUT/n{num_processes}.safetensors. Run
plainly or under `torchrun --nproc_per_node 2`."""

import sys

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import save_file

from hf_modular import ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.decompose import decompose

output = sys.argv[1]
strategy = sys.argv[2] if len(sys.argv) > 2 else "activation"
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
labels = ["a", "b", "c"]
config = ModularResNetConfig(layers=[1, 1], widths=[4, 8], stem_width=4, image_size=8, id2label=dict(enumerate(labels)))
model = ModularResNetForImageClassification(config).eval()
rng = np.random.default_rng(0)
# 61 rows: the shards are uneven on 2 processes, which is the case that padding would get wrong.
images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(61)]
features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=labels)})
data = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(61)]}, features=features)
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
