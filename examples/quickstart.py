"""Quick start: build a ModularResNet, save it, and reload it through transformers and timm with equal logits.

python examples/quickstart.py [--output DIR]
"""

import argparse
import tempfile

import timm
import torch
from transformers import AutoModelForImageClassification, pipeline

import hf_modular  # noqa: F401  (registers modular_resnet with transformers' Auto classes and timm)
from hf_modular import ModularResNetConfig, ModularResNetForImageClassification

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--output", default=None, help="where to save the model (default: a temporary directory)")
args = parser.parse_args()
output = args.output or tempfile.mkdtemp(prefix="hf-modular-quickstart-")

torch.manual_seed(0)
labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
config = ModularResNetConfig.from_preset("modular_resnet20", id2label=dict(enumerate(labels)))
model = ModularResNetForImageClassification(config).eval()
model.save_pretrained(output)  # config.json, model.safetensors, preprocessor_config.json
print(f"saved a ResNet-20 ({sum(p.numel() for p in model.parameters()):,} parameters) to {output}")

images = torch.randn(4, 3, 32, 32)
with torch.no_grad():
    reference = model(images).logits
    loaded = {
        "ModularResNetForImageClassification": ModularResNetForImageClassification.from_pretrained(output),
        "AutoModelForImageClassification": AutoModelForImageClassification.from_pretrained(output),
        "timm local-dir:": timm.create_model(f"local-dir:{output}", pretrained=True),
    }
    for name, reloaded in loaded.items():
        logits = reloaded.eval()(images)
        logits = getattr(logits, "logits", logits)  # timm returns a tensor, transformers an output object
        print(f"{name:<38} max |logit difference| = {(logits - reference).abs().max().item():.1e}")
        assert torch.equal(logits, reference)

classifier = pipeline("image-classification", model=output)
image = (torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()
print("pipeline on a random image:", classifier(image, top_k=3))
