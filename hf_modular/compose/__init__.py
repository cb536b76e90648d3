"""Composition of class modules into a classifier: the paper's vote, and `ComposedModel`.

    composed = ComposedModel.from_modules(["org/cat-module", "other-org/dog-module@<sha>", local_module])
    composed.predict(images)             # ["cat", "dog", ...]: each module preprocesses the raw images itself
    composed.replace("cat", better_cat)  # swap one class's module

`model.py` holds the composed model, `rules.py` how answers combine, `members.py` how members are loaded and fed,
`execution.py` how members of one parent share their trunk, `fitting.py` how modules of strangers are fitted.
"""

from .execution import ExecutionPlan
from .members import composed_image_processor
from .model import ComposedConfig, ComposedModel, collect_module_logits
from .rules import RULES, own_class_probabilities, top_k, vote

__all__ = [
    "RULES",
    "ComposedConfig",
    "ComposedModel",
    "ExecutionPlan",
    "collect_module_logits",
    "composed_image_processor",
    "own_class_probabilities",
    "top_k",
    "vote",
]
