"""The interface every decomposition strategy implements, and the registry that names them.

A strategy is a dataclass of its options (each field documented with `metadata={"help": ...}`, which the CLI turns
into `--option` flags) and three steps:

    observations = strategy.observe(parent, dataset, plan, ...)      # the statistics pass (data-parallel)
    built = strategy.build(parent, observations, plan, ...)          # (module, details) per planned class, in turn
    strategy.describe(provenance)                                    # words and figures for cards and reports

The pipeline (`hf_modular.decompose.decompose`) owns everything around them: loading, sampling, labelling,
provenance, cost. Adding a strategy is one new file with a `@register_strategy` class, and one import line in
`strategies/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
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
    headline_format: ClassVar[str | None] = None  # how the CLI prints that mean (None: "mean <headline> 0.123")
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
    ) -> Iterator[BuiltModule]:
        """One module per class of `plan.classes`, in that order, each with a two-way head (own class, rest).

        Yield each module as soon as it is built: the pipeline hands it on (`decompose_to_directory` saves it) before
        asking for the next, so an interrupted run keeps the modules finished so far. Every process must yield the
        same modules in the same order (collective operations between them are fine: every process asks for every
        module)."""
        raise NotImplementedError

    @classmethod
    def describe(cls, info: ModuleProvenance) -> ModuleDescription:
        """What a module built by this strategy is, from its provenance (`info.details` holds `build`'s
        measurements)."""
        raise NotImplementedError


STRATEGIES: dict[str, type[Strategy]] = {}
# The pipeline's own options (`decompose`'s keyword arguments), which a strategy's options sit beside in one call and
# one command line: no strategy option may take their names.
PIPELINE_OPTIONS = (
    "model",
    "dataset",
    "classes",
    "samples_per_class",
    "negatives_ratio",
    "strategy",
    "split",
    "dataset_revision",
    "dataset_config",
    "num_workers",
    "image_column",
    "label_column",
    "batch_size",
    "seed",
    "accelerator",
    "progress",
    "on_module",
    "strategy_options",
    # decompose_to_directory's own
    "output",
    "eval_dataset",
    "eval_split",
    "eval_limit",
    "overwrite",
)


def register_strategy(strategy: type[Strategy]) -> type[Strategy]:
    """Class decorator: make `strategy` available by its `name` to `decompose`, the CLI, cards and reports."""
    if not dataclasses.is_dataclass(strategy):
        raise TypeError(f"{strategy.__name__} must be a dataclass of its options.")
    registered = STRATEGIES.get(strategy.name)
    if registered is not None and _qualified(registered) != _qualified(strategy):  # the same class reloaded is fine
        raise ValueError(
            f"A strategy named {strategy.name!r} is registered already ({_qualified(registered)}): give "
            f"{strategy.__name__} another `name`."
        )
    _check_option_names(strategy)
    STRATEGIES[strategy.name] = strategy
    register_describer(strategy.name, strategy.describe)
    return strategy


def _qualified(strategy: type[Strategy]) -> str:
    return f"{strategy.__module__}.{strategy.__qualname__}"


def _check_option_names(strategy: type[Strategy]) -> None:
    """A strategy's options share one call and one command line with the pipeline's options and every other
    strategy's: a name of the pipeline's is refused, and so is another strategy's option name with another type,
    default or choices (one `--flag` serves both)."""
    fields = dataclasses.fields(strategy)
    taken = sorted(option.name for option in fields if option.name in PIPELINE_OPTIONS)
    if taken:
        raise ValueError(
            f"{strategy.__name__}'s option {', '.join(taken)} is the decomposition's own ({', '.join(taken)}=... of "
            "decompose, and its command-line flag): rename it."
        )
    for option in fields:
        for other in STRATEGIES.values():
            same = next((field for field in dataclasses.fields(other) if field.name == option.name), None)
            if other.name == strategy.name or same is None:
                continue
            theirs, ours = _flag_of(same), _flag_of(option)
            if theirs != ours:
                raise ValueError(
                    f"{strategy.__name__}'s option {option.name!r} ({_described(ours)}) has the name of the "
                    f"{other.name!r} strategy's ({_described(theirs)}), and one --{option.name.replace('_', '-')} "
                    "flag serves both: give it the same type, default and choices, or another name."
                )


def _flag_of(option: dataclasses.Field) -> tuple[str, Any, Any]:
    """What a command-line flag takes from an option: its type (by name: an annotation imported for type checkers
    only is not resolved), its default and its choices."""
    annotation = option.type if isinstance(option.type, str) else getattr(option.type, "__name__", str(option.type))
    default = option.default_factory() if option.default_factory is not dataclasses.MISSING else option.default
    return annotation.replace(" ", ""), default, option.metadata.get("choices")


def _described(flag: tuple[str, Any, Any]) -> str:
    annotation, default, choices = flag
    return f"{annotation}, default {default!r}" + (f", choices {list(choices)}" if choices else "")


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
