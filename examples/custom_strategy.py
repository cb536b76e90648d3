"""Write your own decomposition strategy: one dataclass, registered by name.

    python examples/custom_strategy.py [--epochs 10]

The strategy below is the baseline every decomposition is measured against: each module is the whole parent with
the paper's channeled head (own class against the mean of the others), nothing masked. Once registered it works
everywhere a built-in one does: `decompose(strategy=...)`, `hf-modular decompose --strategy ... --<option>`,
model cards, `hf-modular info` and the decomposition report.
"""

import argparse
from dataclasses import dataclass, field
from typing import ClassVar

import hf_modular
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.decompose import Strategy, register_strategy
from hf_modular.decompose.build import build_module
from hf_modular.decompose.heads import channel_head
from hf_modular.demo import digits_dataset, digits_parent_config
from hf_modular.evaluation import evaluate
from hf_modular.module import ModuleDescription
from hf_modular.train import train


@register_strategy
@dataclass
class WholeParent(Strategy):
    """Options are dataclass fields; `metadata["help"]` becomes the CLI's help for `--temperature`."""

    temperature: float = field(default=1.0, metadata={"help": "divides the channeled head's logits"})
    name: ClassVar[str] = "whole-parent"
    headline: ClassVar[str] = "kept_fraction"  # the figure reports average over the modules

    def observe(self, parent, dataset, plan, **context):
        return None  # this strategy needs no statistics pass; others return what `build` needs

    def build(self, parent, observations, plan, **context):
        # One (module, measurements) per planned class, in order, each yielded as soon as it is built: a
        # decomposition into a directory saves it before the next, so an interrupted run keeps it.
        for class_index in plan.classes:
            weight, bias = channel_head(parent.fc.weight.detach(), parent.fc.bias.detach(), class_index)
            module = build_module(parent, {}, weight / self.temperature, bias / self.temperature)
            yield module, {"kept_fraction": 1.0}

    @classmethod
    def describe(cls, info):  # what cards, `hf-modular info` and reports say about its modules
        return ModuleDescription(
            summary="It is the whole parent with a two-way head: the baseline decompositions are measured against.",
            head="It is the parent's own row for this class against the mean of the other rows.",
            measures={"kept": f"{info.details['kept_fraction']:.0%}"},
            figures={"kept_fraction": info.details["kept_fraction"]},
        )


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()

splits = digits_dataset(seed=0)
parent = ModularResNetForImageClassification(digits_parent_config())
train(parent, splits["train"], epochs=args.epochs, learning_rate=0.05, batch_size=64, horizontal_flip=False)
for strategy in ("whole-parent", "activation"):
    modules = hf_modular.decompose(parent, splits["train"], strategy=strategy, samples_per_class=100, progress=False)
    composed = ComposedModel.from_modules(list(modules.values()))
    print(f"{strategy:>12}: composed top-1 {evaluate(composed, splits['test'], progress=False).top1:.2%}")
print(f"      parent: top-1 {evaluate(parent, splits['test'], progress=False).top1:.2%}")
