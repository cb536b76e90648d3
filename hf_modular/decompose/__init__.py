"""Decompose a trained ModularResNet classifier into one binary module per class.

    modules = hf_modular.decompose(model, dataset)          # {"cat": <module>, ...}

The data flows one way, one file per step: `sampling.py` (which rows each module observes) -> `statistics.py` (the
data-parallel pass) -> `strategies/` (what each module keeps) -> `heads.py` (its two-way head) -> `build.py`
(module models) -> `pipeline.py` (labels and provenance) -> `output.py` (module directories, report, resume).
`continual.py` adapts modules for composition across datasets.
"""

from .continual import continuous_learning
from .output import REPORT_NAME, decompose_to_directory
from .pipeline import DEFAULT_NEGATIVES_RATIO, DEFAULT_SAMPLES_PER_CLASS, DEFAULT_SEED, decompose, planned_modules
from .strategies import (
    STRATEGIES,
    ActivationStrategy,
    ChannelStrategy,
    ModuleSpec,
    Strategy,
    get_strategy,
    register_strategy,
)

__all__ = [
    "DEFAULT_NEGATIVES_RATIO",
    "DEFAULT_SAMPLES_PER_CLASS",
    "DEFAULT_SEED",
    "REPORT_NAME",
    "STRATEGIES",
    "ActivationStrategy",
    "ChannelStrategy",
    "ModuleSpec",
    "Strategy",
    "continuous_learning",
    "decompose",
    "decompose_to_directory",
    "get_strategy",
    "planned_modules",
    "register_strategy",
]
