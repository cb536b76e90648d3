"""Compact modules (`strategy="channel"`): scoring (`importance.py`), physical removal (`pruning.py`), recovery
(`recovery.py`), and the strategy that runs them (`strategy.py`)."""

from .pruning import ChannelSelection, prune
from .strategy import ChannelStrategy

__all__ = ["ChannelSelection", "ChannelStrategy", "prune"]
