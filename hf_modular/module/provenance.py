"""The provenance of a class module: a typed record of where it comes from and what it measured.

It travels in the module's `config.json` as the `module` section (a plain dict, so transformers and timm read the
file unchanged) and is read back through `ModularResNetConfig.provenance`:

    info = module.config.provenance
    info.target_label, info.parent.repo_id, info.method.strategy, info.details["macs_fraction"]

`SCHEMA_VERSION` is written with every record. Records saved by an older release are upgraded on load
(`upgrade`), so every reader sees the current layout; a section that is not a record at all is refused with the
name of the field at fault.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 3  # 3: `dataset.config_name`


@dataclass
class ParentRecord:
    """The classifier a module was decomposed from: its Hub repo and commit, or its local directory's name, and
    where its weights came from when they were imported (its `config.origin`: source, sha256, license)."""

    weights_sha256: str
    architecture: str
    labels: list[str]
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    origin: dict[str, Any] | None = None


@dataclass
class DatasetRecord:
    """The data the statistics pass observed."""

    name_or_path: str | None
    split: str
    fingerprint: str | None = None
    revision: str | None = None
    config_name: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    rows: int | None = None


@dataclass
class MethodRecord:
    """The strategy (`"activation"`, `"channel"`, ...) and its options, as `Strategy.parameters()` gives them."""

    strategy: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplingRecord:
    samples_per_class: int
    negatives_ratio: float
    seed: int


@dataclass
class SampleCounts:
    """Training inputs the module observed: its own class's, and negatives from the other classes."""

    own: int
    negative: int


@dataclass
class ModuleProvenance:
    """Everything a module records about itself.

    Attributes:
        target_label, target_index: the module's class, and its index among the parent's classes.
        parent, dataset, method, sampling, samples: where it comes from and how it was built.
        compute: the cost of the decomposition run that built it (`hf_modular.emissions.ComputeRecord.to_dict()`,
            with `modules_built`, the number of modules the cost covers): the whole run's, shared by its modules; a
            module kept by an interrupted run has that run's cost up to it (each module is saved once built).
        details: the strategy's own measurements (masked fraction and Jaccard index, or parameter and MAC
            fractions, ...); `Strategy.describe` turns them into words.
        evaluation: measured quality on an evaluation split, when the decomposition had one.
        continuous_learning: how the module was adapted for composition with other datasets' modules, if it was.
    """

    target_label: str
    target_index: int
    parent: ParentRecord
    dataset: DatasetRecord
    method: MethodRecord
    sampling: SamplingRecord
    samples: SampleCounts
    compute: dict[str, Any]
    created: str | None = None
    hf_modular_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    continuous_learning: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, section: Any) -> ModuleProvenance:
        """Read a `module` section (any schema version); raise ValueError naming the field that is wrong."""
        section = upgrade(section)
        return _build(cls, section, "module")


_RECORDS = {
    "parent": ParentRecord,
    "dataset": DatasetRecord,
    "method": MethodRecord,
    "sampling": SamplingRecord,
    "samples": SampleCounts,
}
_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _build(record: type, values: dict[str, Any], where: str) -> Any:
    """`record(**values)` with each field checked against its annotation, nested records built."""
    if not isinstance(values, dict):
        raise ValueError(f"config.json `{where}` must be an object, got {type(values).__name__}.")
    known = {f.name: f for f in fields(record)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"config.json `{where}` has unknown fields {unknown}: a newer hf_modular may have written it "
            "(pip install -U hf-modular)."
        )
    arguments = {}
    for name, spec in known.items():
        path = f"{where}.{name}"
        if name not in values:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise ValueError(f"config.json `{path}` is missing: the module's provenance is incomplete.")
            continue
        value = values[name]
        if name in _RECORDS and record is ModuleProvenance:
            arguments[name] = _build(_RECORDS[name], value, path)
            continue
        _check_type(value, str(spec.type), path)
        arguments[name] = value
    return record(**arguments)


def _check_type(value: Any, annotation: str, path: str) -> None:
    """Check `value` against a simple annotation such as `str | None` or `list[str]`."""
    options = [option.strip() for option in annotation.split("|")]
    if value is None and "None" in options:
        return
    for option in options:
        expected = _TYPES.get(option.split("[")[0])
        numeric = option in ("int", "float")
        if expected is not None and isinstance(value, expected) and not (numeric and isinstance(value, bool)):
            if option == "list[str]" and not all(isinstance(item, str) for item in value):
                continue
            return
    raise ValueError(f"config.json `{path}` should be {annotation}, got {value!r:.60}.")


def upgrade(section: Any) -> dict[str, Any]:
    """A `module` section in the current schema. Release 0.1.0 wrote no version (schema 1): its method options sat
    beside `strategy`, and the activation strategy's masked fraction and Jaccard index sat at the top level."""
    if not isinstance(section, dict):
        raise ValueError(f"config.json `module` must be an object, got {type(section).__name__}.")
    section = copy.deepcopy(section)
    version = section.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(
            f"config.json `module.schema_version` is {version!r}; this hf_modular reads schemas up to "
            f"{SCHEMA_VERSION}. Upgrade hf_modular (pip install -U hf-modular)."
        )
    if version == 1:
        method = section.get("method")
        if isinstance(method, dict) and "parameters" not in method:
            options = {key: value for key, value in method.items() if key != "strategy"}
            section["method"] = {"strategy": method.get("strategy"), "parameters": options}
        details = section.setdefault("details", {})
        for key in ("masked_fraction", "jaccard_index"):
            if key in section and isinstance(details, dict):
                details[key] = section.pop(key)
    section["schema_version"] = SCHEMA_VERSION  # 2 -> 3 only added optional fields
    return section
