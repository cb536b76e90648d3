"""Compact modules: per class, a physically smaller network that composes like the paper's modules.

    python examples/compact_modules.py [--epochs 15] [--distill-steps 200]

Runs offline on scikit-learn's digits: trains a small parent, decomposes it with `strategy="channel"` (its last
stage pruned to a quarter of its inner channels, then distilled), and composes the ten compact modules, which share
the parent's untouched first stages.
"""

import argparse

import hf_modular
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.demo import digits_dataset, digits_parent_config
from hf_modular.evaluation import evaluate
from hf_modular.module import count_parameters
from hf_modular.train import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument("--distill-steps", type=int, default=200)
args = parser.parse_args()

splits = digits_dataset(seed=0)
parent = ModularResNetForImageClassification(digits_parent_config())
train(parent, splits["train"], epochs=args.epochs, learning_rate=0.05, batch_size=64, horizontal_flip=False)
parent_top1 = evaluate(parent, splits["test"], progress=False).top1
print(f"parent: {count_parameters(parent):,} parameters, top-1 {parent_top1:.2%}")

modules = hf_modular.decompose(
    parent, splits["train"], strategy="channel", keep=0.25, samples_per_class=100, distill_steps=args.distill_steps
)
for label, module in modules.items():
    details = module.config.provenance.details
    print(
        f"module {label}: {details['parameters']:,} parameters ({details['parameters_fraction']:.0%} of the "
        f"parent's), {details['macs_fraction']:.0%} of its multiply-accumulates"
    )

composed = ComposedModel.from_modules(list(modules.values()))
print(f"composed top-1: {evaluate(composed, splits['test'], progress=False).top1:.2%}")
print(f"steps the composition runs once instead of once per module: {composed.execution_plan.shared_steps}")
