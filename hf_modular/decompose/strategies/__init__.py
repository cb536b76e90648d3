"""Decomposition strategies, one file (or folder) each, registered by name.

To add one: write `strategies/<name>.py` with a `@register_strategy` dataclass that subclasses `Strategy`, and
import it below. `decompose(..., strategy="<name>")`, `hf-modular decompose --strategy <name>` (with a flag per
option), cards, `hf-modular info` and reports then know it.
"""

# The registration lines: importing a strategy's file registers it.
from .activation import ActivationStrategy, ModuleSpec  # noqa: E402, I001
from .base import STRATEGIES, BuiltModule, Strategy, get_strategy, register_strategy, strategy_among, strategy_of
from .channel import ChannelStrategy  # noqa: E402

__all__ = [
    "STRATEGIES",
    "ActivationStrategy",
    "BuiltModule",
    "ChannelStrategy",
    "ModuleSpec",
    "Strategy",
    "get_strategy",
    "register_strategy",
    "strategy_among",
    "strategy_of",
]
