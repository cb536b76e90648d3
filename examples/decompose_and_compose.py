"""The demo's steps as library calls: train a parent, decompose it, compose modules, predict.

    python examples/decompose_and_compose.py [--output DIR] [--epochs 15]

Runs offline on scikit-learn's digits (see `hf-modular demo` for the full version with reuse and replacement).
"""

import argparse
import tempfile

import hf_modular
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.data import select_classes
from hf_modular.demo import digits_dataset, digits_parent_config
from hf_modular.evaluation import evaluate
from hf_modular.train import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--output", default=None, help="where to save the modules (default: a temporary directory)")
parser.add_argument("--epochs", type=int, default=15)
args = parser.parse_args()
output = args.output or tempfile.mkdtemp(prefix="hf-modular-example-")

# 1. A parent: a small ResNet for 8x8 grey digits, trained for a few seconds.
splits = digits_dataset(seed=0)
parent = ModularResNetForImageClassification(digits_parent_config())
train(parent, splits["train"], epochs=args.epochs, learning_rate=0.05, batch_size=64, horizontal_flip=False)
print(f"parent top-1 on held-out digits: {evaluate(parent, splits['test'], progress=False).top1:.2%}")

# 2. One module per class.
modules = hf_modular.decompose(parent, splits["train"], samples_per_class=100)
for label, module in modules.items():
    module.save_pretrained(f"{output}/{label}-module")  # Hub-ready: push with module.push_to_hub("org/name")
print(f"saved {len(modules)} modules to {output}")

# 3. Compose all of them back, and a 3-class classifier from three of them.
everything = ComposedModel.from_modules(list(modules.values()))
print(f"composed top-1: {evaluate(everything, splits['test'], progress=False).top1:.2%}")
small = ComposedModel.from_modules([f"{output}/{digit}-module" for digit in ("0", "1", "7")])
test = select_classes(splits["test"], ["0", "1", "7"]).select(range(8))
print("a 0/1/7 classifier, no training:", small.predict(test["image"]))
print("                          truth:", [test.features["label"].int2str(label) for label in test["label"]])
print(f"its top-1 on held-out 0/1/7 images: {evaluate(small, splits['test'], progress=False).top1:.2%}")
