"""The interface every decomposition strategy implements, and the registry that names them.

A strategy is a dataclass of its options (each field documented with `metadata={"help": ...}`, which the CLI turns
into `--option` flags) and three steps:

    observations = strategy.observe(parent, dataset, plan, ...)      # the statistics pass (data-parallel)
    built = strategy.build(parent, observations, plan, ...)          # one (module, details) per planned class
    strategy.describe(provenance)                                    # words and figures for cards and reports

The pipeline (`hf_modular.decompose.decompose`) owns everything around them: loading, sampling, labelling,
provenance, cost. Adding a strategy is one new file with a `@register_strategy` class, and one import line in
`strategies/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import datasets
from accelerate import PartialState

from ...models import ModularResNetForImageClassification
from ...module import ModuleDescription, ModuleProvenance, register_describer
from ...module.provenance import MethodRecord
from ..sampling import SamplePlan

# A built module (a 2-output ModularResNet, labelled by the pipeline) and the strategy's measurements of it.
BuiltModule = tuple[ModularResNetForImageClassification, dict[str, Any]]


@dataclass
class Strategy:
    """Base class of decomposition strategies; subclasses are dataclasses of their options."""

    name: ClassVar[str]
    headline: ClassVar[str]  # the figure of `describe(...).figures` that reports average over the modules
    headline_format: ClassVar[str] = "{:.3f}"  # how the CLI prints that mean
    supports_continuous_learning: ClassVar[bool] = False

    def parameters(self) -> dict[str, Any]:
        """The options as recorded in each module's provenance (`method.parameters`)."""
        return {option.name: getattr(self, option.name) for option in dataclasses.fields(self)}

    def observe(
        self,
        parent: ModularResNetForImageClassification,
        dataset: datasets.Dataset,
        plan: SamplePlan,
        *,
        image_column: str,
        label_column: str,
        batch_size: int,
        state: PartialState,
        progress: bool,
        num_workers: int = 0,
    ) -> Any:
        """Run the parent over the planned rows (sharded across `state`'s processes; images decoded by `num_workers`
        DataLoader workers) and return what `build` needs; every process must return the same observations."""
        raise NotImplementedError

    def build(
        self,
        parent: ModularResNetForImageClassification,
        observations: Any,
        plan: SamplePlan,
        *,
        dataset: datasets.Dataset,
        image_column: str,
        seed: int,
        state: PartialState,
        progress: bool,
    ) -> list[BuiltModule]:
        """One module per class of `plan.classes`, in that order, each with a two-way head (own class, rest)."""
        raise NotImplementedError

    @classmethod
    def describe(cls, info: ModuleProvenance) -> ModuleDescription:
        """What a module built by this strategy is, from its provenance (`info.details` holds `build`'s
        measurements)."""
        raise NotImplementedError


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(strategy: type[Strategy]) -> type[Strategy]:
    """Class decorator: make `strategy` available by its `name` to `decompose`, the CLI, cards and reports."""
    if not dataclasses.is_dataclass(strategy):
        raise TypeError(f"{strategy.__name__} must be a dataclass of its options.")
    STRATEGIES[strategy.name] = strategy
    register_describer(strategy.name, strategy.describe)
    return strategy


def get_strategy(name: str, **options: Any) -> Strategy:
    """The strategy `name` with `options`; unknown names and options get an error that lists the valid ones."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {list(STRATEGIES)}.")
    strategy = STRATEGIES[name]
    known = [option.name for option in dataclasses.fields(strategy) if option.init]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"Strategy {name!r} has no option {', '.join(unknown)}; its options are {known}.")
    return strategy(**options)


def strategy_among(name: str, options: dict[str, Any]) -> Strategy:
    """The strategy `name` with those of `options` that are its own (the others are the pipeline's: batch size, seed,
    ...)."""
    own = {option.name for option in dataclasses.fields(STRATEGIES[name])} if name in STRATEGIES else set()
    return get_strategy(name, **{key: value for key, value in options.items() if key in own})


def strategy_of(method: MethodRecord) -> Strategy:
    """The strategy a module's provenance names, with the options it was built with."""
    return get_strategy(method.strategy, **method.parameters)
