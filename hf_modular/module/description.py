"""How a module describes itself in words and figures, by the strategy that built it.

Each decomposition strategy registers a describer here (`register_describer`, done by
`hf_modular.decompose.strategies.register_strategy`), so cards, `hf-modular info` and reports render any strategy's
modules without knowing the strategies. A module built by a strategy this installation does not know still gets a
plain description from its provenance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .provenance import ModuleProvenance


@dataclass
class ModuleDescription:
    """What a strategy says about one of its modules.

    Attributes:
        summary: one or two sentences for the card's introduction (what the module is, beside the parent).
        head: how its binary head was made (the card's limitations).
        rows: `(name, markdown)` rows for the card's origin table.
        measures: short figures for terminal tables, e.g. `{"masked": "12.34%", "Jaccard": "0.812"}`.
        figures: the same as numbers, for `decomposition.json` (e.g. `{"masked_fraction": 0.1234}`).
    """

    summary: str
    head: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    measures: dict[str, str] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)


Describer = Callable[[ModuleProvenance], ModuleDescription]
_DESCRIBERS: dict[str, Describer] = {}


def register_describer(strategy: str, describer: Describer) -> None:
    _DESCRIBERS[strategy] = describer


def describe(provenance: ModuleProvenance) -> ModuleDescription:
    """The registered strategy's description of the module, or a plain one for an unknown strategy."""
    describer = _DESCRIBERS.get(provenance.method.strategy)
    if describer is not None:
        return describer(provenance)
    return ModuleDescription(
        summary=f"It was built by the `{provenance.method.strategy}` strategy, which this installation of "
        "hf_modular does not know; upgrade hf_modular for its details.",
        head="Its head has two outputs: this class, then the rest.",
    )
