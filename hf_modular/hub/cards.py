"""Model cards for modules and parents, rendered with `huggingface_hub.ModelCard` from the Jinja templates in
`model_cards/` (installed as `hf_modular.model_cards`)."""

from __future__ import annotations

import platform
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn
from transformers import PreTrainedConfig

from ..module import (
    OWN_VS_REST_METRICS,
    ModuleProvenance,
    count_parameters,
    describe,
    parent_name,
    weights_sha256,
)
from ..module.provenance import ParentRecord

TAGS = ["hf-modular", "image-classification"]
# How a card ties a model to its base models, in the Hub's vocabulary (adapter, merge, quantized, finetune): a module
# is a changed copy of its parent's weights that runs on its own ("finetune"; "adapter" would mean weights that need
# the base model loaded beside them); a composition combines several models into one ("merge").
MODULE_RELATION, COMPOSED_RELATION = "finetune", "merge"
UNKNOWN_LICENSE = (
    "The license is unknown: neither the parent's card nor its recorded origin states one. Check the parent's terms "
    "before reuse."
)


def template_path(name: str) -> str:
    """Path of a card template shipped with the package (`module`, `parent`, `composed`)."""
    try:
        directory = files("hf_modular.model_cards")
    except ModuleNotFoundError:  # imported straight from a source checkout: model_cards/ sits beside the package
        directory = Path(__file__).resolve().parents[2] / "model_cards"
    return str(directory / f"{name}.md.j2")


def module_card(config: PreTrainedConfig, repo_id: str | None = None, *, license: str | None = None) -> ModelCard:
    """The card of a class module, from its config (a `ModularResNetConfig` whose provenance holds the metrics).

    `repo_id` is where the module lives (used in the snippets); without it the card refers to a local directory.
    Without a `license`, the one recorded when the parent's weights were imported (`origin`) is the card's.
    """
    if not getattr(config, "module", None):
        raise ValueError("This config has no `module` section: it is a plain classifier. Use parent_card.")
    info = ModuleProvenance.from_dict(config.module)
    parent = info.parent
    license = license or (parent.origin or {}).get("license")
    evaluation = info.evaluation
    dataset_name = info.dataset.name_or_path
    hub_dataset = dataset_name if _is_repo_id(dataset_name) else None
    card_data = ModelCardData(
        library_name="hf_modular",
        pipeline_tag="image-classification",
        tags=[*TAGS, "cnn-module", _architecture(config), f"class-{info.target_label}"],
        base_model=parent.repo_id,
        base_model_relation=MODULE_RELATION if parent.repo_id else None,
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=["accuracy"],
        license=license,
        model_name=repo_id or f"{info.target_label}-module",
        # The Hub's model-index needs a real dataset id: results on local data stay in the card's text.
        eval_results=_module_results(info) if evaluation and _is_repo_id(evaluation["dataset"]) else None,
        co2_eq_emissions=co2_metadata(info.compute, "decomposition"),
    )
    return _render(
        "module",
        card_data,
        title=f"{info.target_label} module of {parent_name(parent)}",
        info=info,
        description=describe(info),
        evaluation=evaluation,
        quality_metrics=OWN_VS_REST_METRICS,
        repo_id=repo_id or f"path/to/{info.target_label}-module",
        parent_link=_parent_link(parent),
        parent_revision=f"`{parent.revision}`" if parent.revision else "local weights (see sha256)",
        license_text=f"`{license}` (the parent's)." if license else UNKNOWN_LICENSE,
        dataset_link=f"[{dataset_name}](https://huggingface.co/datasets/{dataset_name})"
        if hub_dataset
        else f"`{dataset_name}`"
        if dataset_name
        else "an in-memory `datasets.Dataset`",
        **_input_fields(config),
    )


def parent_card(
    model: nn.Module,
    repo_id: str | None = None,
    *,
    evaluation: dict[str, Any] | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card of a plain ModularResNet classifier (a parent), with optional measured accuracy. Without a
    `license`, the one recorded when the weights were imported (`config.origin`) is the card's."""
    config = model.config
    license = license or (config.origin or {}).get("license")
    card_data = ModelCardData(
        library_name="hf_modular",
        pipeline_tag="image-classification",
        tags=[*TAGS, _architecture(config)],
        metrics=["accuracy"],
        license=license,
        model_name=repo_id or _architecture(config),
    )
    return _render(
        "parent",
        card_data,
        title=repo_id or _architecture(config),
        labels=[config.id2label[i] for i in range(config.num_labels)],
        parameters=count_parameters(model),
        weights_sha256=weights_sha256(model),
        evaluation=evaluation,
        training=config.training,
        origin=config.origin,
        repo_id=repo_id or "path/to/model",
        license_text=f"`{license}`." if license else "As the weights' original license says.",
        **_input_fields(config),
    )


def composed_card(
    config: Any,
    repo_id: str | None = None,
    *,
    evaluation: dict[str, Any] | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card of a composed model (a `ComposedConfig`): its modules and where each comes from."""
    members = []
    for entry in config.members:
        source = entry.get("source")
        members.append(
            {
                "label": entry["label"],
                "where": f"[{source}](https://huggingface.co/{source})"
                if _is_repo_id(source)
                else f"`{Path(source).name}` (a local directory)"  # named, never by its path on this machine
                if source
                else f"`{entry.get('subfolder')}` (inside this repo)",
                "revision": f"`{entry['revision']}`" if entry.get("revision") else "-",
            }
        )
    hub_modules = [entry["source"] for entry in config.members if _is_repo_id(entry.get("source"))]
    parents = sorted({parent for parent in (_member_parent(entry) for entry in config.members) if parent})
    eval_results = None
    if evaluation and _is_repo_id(evaluation["dataset"]):  # the model-index needs a real dataset id
        common = {
            "task_type": "image-classification",
            "dataset_type": evaluation["dataset"],
            "dataset_name": evaluation["dataset"],
            "dataset_split": evaluation["split"],
        }
        eval_results = [
            EvalResult(
                metric_type="accuracy", metric_value=round(evaluation["top1"], 4), metric_name="top-1", **common
            ),
            EvalResult(
                metric_type="top_5_accuracy", metric_value=round(evaluation["top5"], 4), metric_name="top-5", **common
            ),
        ]
    fit_data = (config.fit or {}).get("data", {}).get("name_or_path")
    card_data = ModelCardData(
        library_name="hf_modular",
        pipeline_tag="image-classification",
        tags=[*TAGS, "composed-model"],
        datasets=[fit_data] if _is_repo_id(fit_data) else None,  # the Hub dataset its heads were fitted on
        base_model=hub_modules or None,
        base_model_relation=COMPOSED_RELATION if hub_modules else None,
        metrics=["accuracy"],
        license=license,
        model_name=repo_id or "composed-model",
        eval_results=eval_results,
    )
    return _render(
        "composed",
        card_data,
        title=repo_id or "Composed classifier",
        members=members,
        parents=parents,
        evaluation=evaluation,
        answering=_how_a_composition_answers(config),
        repo_id=repo_id or "path/to/composed",
        input_size=_input_size(config),
    )


VOTE = "the paper's vote (the single module that claims an image wins; otherwise the highest own-class probability)"


def _how_a_composition_answers(config: Any) -> str:
    """The card's words for how the modules' answers become one: by their own heads, by heads fitted for this
    composition (on which data), or by calibrated probabilities."""
    if config.fit:
        data = config.fit["data"]
        name = data.get("name_or_path") or "an in-memory dataset"
        commit = f" at commit `{data['revision'][:12]}`" if data.get("revision") else ""
        return (
            "Each module answers with an own-vs-rest head refitted for this composition (`ComposedModel.fit`: "
            "logistic regression on the module's frozen features, its repo unchanged) on "
            f"{data['images']} images ({data['images_per_class']} per class) of `{name}`{commit}, split "
            f"`{data['split']}`; the answers are combined by {VOTE}."
        )
    if config.rule == "calibrated":
        return (
            "Each module's own-class probability is Platt-calibrated for this composition (`ComposedModel.calibrate`), "
            "and the highest calibrated probability wins."
        )
    return f"The modules' answers are combined by {VOTE}."


def co2_metadata(compute: dict[str, Any] | None, training_type: str) -> dict[str, Any] | None:
    """The Hub's `co2_eq_emissions` metadata (grams, source, training type, hardware) for a measured compute record."""
    if not compute or not compute.get("co2e_kg"):
        return None
    source = "codecarbon" if compute.get("method") == "codecarbon" else "estimated (Pan & Rajan's formula)"
    return {
        "emissions": round(1000 * compute["co2e_kg"], 4),
        "source": source,
        "training_type": training_type,
        "hardware_used": compute.get("details", {}).get("hardware") or platform.processor() or platform.machine(),
    }


def _member_parent(entry: dict[str, Any]) -> str | None:
    """The parent a composition member was decomposed from, as its entry records it (Hub id or local name)."""
    return entry.get("parent")


def _render(template: str, card_data: ModelCardData, **context: Any) -> ModelCard:
    try:
        return ModelCard.from_template(card_data, template_path=template_path(template), **context)
    except Exception as error:  # jinja2's errors do not say which template failed
        raise ValueError(f"Could not render the {template} card from {template_path(template)}: {error}") from error


def _module_results(info: ModuleProvenance) -> list[EvalResult]:
    """The module's own results (its "own class or not" decision), for the card's model-index. The composition's
    and the parent's figures stay in the card's text: they are not this model's results."""
    evaluation = info.evaluation
    same_data = evaluation["dataset"] == info.dataset.name_or_path  # then the decomposition's revision is known
    common = {
        "task_type": "image-classification",
        "dataset_type": evaluation["dataset"],
        "dataset_name": evaluation["dataset"],
        "dataset_split": evaluation["split"],
        "dataset_revision": info.dataset.revision if same_data else None,
    }
    quality = evaluation.get("own_vs_rest", {}).get("module") or {"accuracy": evaluation["binary_accuracy"]}
    return [
        EvalResult(
            metric_type=metric.hub_type,
            metric_value=round(quality[metric.key], 4),
            metric_name=metric.hub_name.format(label=info.target_label),
            **common,
        )
        for metric in OWN_VS_REST_METRICS
        if quality.get(metric.key) is not None  # an AUC without negatives is undefined, not a result
    ]


def _input_size(config: PreTrainedConfig) -> str:
    return f"{config.num_channels}x{config.image_size}x{config.image_size}"


def _input_fields(config: PreTrainedConfig) -> dict[str, Any]:
    return {
        "input_size": _input_size(config),
        "mean": [round(m, 4) for m in config.image_mean],
        "std": [round(s, 4) for s in config.image_std],
        "architecture": _architecture(config),
        "image_mode": "L" if config.num_channels == 1 else "RGB",  # what PIL must give the processor
    }


def _architecture(config: PreTrainedConfig) -> str:
    return (config.preset or "modular_resnet").replace("_", "-")


def _parent_link(parent: ParentRecord) -> str:
    if parent.repo_id:
        return f"[{parent.repo_id}](https://huggingface.co/{parent.repo_id})"
    return f"a local `{parent.architecture}` (weights sha256 below)"


def _is_repo_id(name: str | None) -> bool:
    """A Hub id looks like `name` or `org/name`; local files and folders do not."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")) or name.endswith((".parquet", ".json")):
        return False
    return name.count("/") <= 1 and " " not in name
