"""Compose community modules from several parents, then replace a faulty one, and publish the result.

    python examples/compose_and_replace.py MODULE [MODULE ...] --replace LABEL=MODULE [--push-to ORG/NAME]

MODULE is a Hub repo id (pin a revision with "@<sha>") or a local module directory. The composition is measured on
scikit-learn's held-out digits before and after the replacement (pass --dataset for other data).
"""

import argparse

from hf_modular import ComposedModel
from hf_modular.data import load_image_dataset
from hf_modular.demo import digits_dataset
from hf_modular.evaluation import evaluate

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("modules", nargs="+", metavar="MODULE")
parser.add_argument("--replace", required=True, metavar="LABEL=MODULE", help="the module to swap in for LABEL")
parser.add_argument("--dataset", default=None, help="evaluation data (default: held-out digits)")
parser.add_argument("--push-to", default=None, metavar="ORG/NAME", help="publish the repaired composition")
args = parser.parse_args()

test = digits_dataset(seed=0)["test"] if args.dataset is None else load_image_dataset(args.dataset, split="test")
composed = ComposedModel.from_modules(args.modules)
label, replacement = args.replace.split("=", 1)
before = evaluate(composed, test, progress=False)
composed.replace(label, replacement)
after = evaluate(composed, test, progress=False)
print(f"{'':<8} {'recall of ' + label:>14} {'top-1':>8}")
print(f"{'before':<8} {before.per_class[label]:>14.2%} {before.top1:>8.2%}")
print(f"{'after':<8} {after.per_class[label]:>14.2%} {after.top1:>8.2%}")
if args.push_to:
    result = composed.push_to_hub(args.push_to)
    print(f"published {result.repo_id} at {result.commit_sha}")
