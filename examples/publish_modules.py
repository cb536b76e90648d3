"""Decompose a parent and publish every module as its own Hub repo (with its model card).

    python examples/publish_modules.py --namespace my-org [--model DIR_OR_REPO --dataset NAME_OR_PATH]
                                       [--weak-class 8] [--name-template "{parent_name}-{label}-module"]

Without --model, a parent is trained first on scikit-learn's digits (with --weak-class, on only 10% of that class's
images, to have a faulty module to replace later). The token and endpoint come from huggingface_hub (`HF_TOKEN`,
`hf auth login`, `HF_ENDPOINT`): against a local endpoint see "Try it without the Hub" in the README.
"""

import argparse
import sys
import tempfile

import hf_modular
from hf_modular import ModularResNetForImageClassification
from hf_modular.decompose.output import decompose_to_directory
from hf_modular.demo import digits_dataset, digits_parent_config
from hf_modular.scenarios import weaken
from hf_modular.train import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--namespace", required=True, help="Hub user or organisation to publish under")
parser.add_argument("--model", default=None, help="a ModularResNet classifier (default: train one on the digits)")
parser.add_argument("--dataset", default=None, help="its training data (default: the digits)")
parser.add_argument("--weak-class", default=None, help="digits only: train with 10%% of this class's images")
parser.add_argument("--name-template", default="{parent_name}-{label}-module")
parser.add_argument("--parent-name", default="digits", help="repo name of the parent (when one is trained)")
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument("--samples-per-class", type=int, default=100)
args = parser.parse_args()
# What it is doing goes to stderr, as the progress bars do; stdout has only the results, one module per line.
work = tempfile.mkdtemp(prefix="hf-modular-publish-")

if args.model:
    parent = ModularResNetForImageClassification.from_pretrained(args.model)
    data = args.dataset
else:
    data = digits_dataset(seed=0)["train"]
    if args.weak_class:
        data = weaken(data, args.weak_class, keep=0.1)
    parent = ModularResNetForImageClassification(digits_parent_config())
    print(f"Training a parent on the digits for {args.epochs} epochs ...", file=sys.stderr)
    train(parent, data, epochs=args.epochs, learning_rate=0.05, batch_size=64, horizontal_flip=False)
    # Publish the parent too, so every module's card can name it as its base model.
    parent.push_to_hub(f"{args.namespace}/{args.parent_name}")
    parent = ModularResNetForImageClassification.from_pretrained(f"{args.namespace}/{args.parent_name}")

print("Decomposing it into one module per class ...", file=sys.stderr)
decompose_to_directory(parent, data, f"{work}/modules", samples_per_class=args.samples_per_class)
print(f"Pushing the modules to {args.namespace}/ ...", file=sys.stderr)
results = hf_modular.hub.push_modules(f"{work}/modules", args.namespace, name_template=args.name_template)
for label, result in results.items():
    print(f"{label}\t{result.repo_id}\t{result.commit_sha}")
