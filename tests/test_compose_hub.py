"""Composed models on the Hub (the local Hub-protocol server): push, card, load by pinned revision, pipeline."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from transformers import pipeline

import hf_modular  # noqa: F401
from hf_modular import ComposedModel
from tests.hub_server import DEFAULT_USER, hub_server_fixture  # noqa: F401
from tests.test_compose import NAMES_A, NAMES_B, _images, _modules


def test_push_composed_model_and_load_it_back(hub_server, tmp_path):
    modules_a, modules_b = _modules(NAMES_A, 0), _modules(NAMES_B, 1, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    dark_repo = f"{DEFAULT_USER}/dark-module"
    first = modules_a["dark"].push_to_hub(dark_repo)
    # Another module, a later commit: the composition must stay pinned to the first.
    modules_a["mid"].push_to_hub(dark_repo, overwrite=True)
    modules_b["sun"].save_pretrained(tmp_path / "sun-module")
    composed = ComposedModel.from_modules([f"{dark_repo}@{first.commit_sha}", tmp_path / "sun-module"])
    images = _images()
    expected = composed.predict_logits(images)

    repo = f"{DEFAULT_USER}/dark-and-sun"
    evaluation = {"dataset": "local", "split": "test", "images": 6, "top1": 0.5, "top5": 1.0}
    result = composed.push_to_hub(repo, evaluation=evaluation)
    files = set(HfApi().list_repo_files(repo))
    assert {"config.json", "preprocessor_config.json", "README.md"} <= files
    assert "modules/sun-module/model.safetensors" in files  # a local module cannot be referenced: stored inside
    assert not any(name.startswith("modules/dark") for name in files)  # a Hub module is referenced, pinned
    config = ComposedModel.config_class.from_pretrained(repo)
    assert config.members[0] == {
        "label": "dark",
        "source": dark_repo,
        "revision": first.commit_sha,
        "parent": modules_a["dark"].config.provenance.parent.repo_id or "modular_resnet",
    }
    assert composed.push_to_hub(repo, evaluation=evaluation).changed is False
    # A Hub repo of the other kind names the loader that takes it (transformers would only warn, then fail later).
    with pytest.raises(ValueError, match="is a composed model: load it with ComposedModel.from_pretrained"):
        hf_modular.ModularResNetForImageClassification.from_pretrained(repo)
    with pytest.raises(ValueError, match="is a classifier or class module: load it with ModularResNetForImage"):
        ComposedModel.from_pretrained(dark_repo)
    assert result.changed

    card = ModelCard.load(repo)
    assert "composed-model" in card.data.tags and card.data.base_model == [dark_repo]
    assert card.data.base_model_relation == "merge" and "Decomposed from:" in card.text
    assert first.commit_sha in card.text and "sun" in card.text
    assert card.data.eval_results[0].metric_value == 0.5

    loaded = ComposedModel.from_pretrained(repo)
    torch.testing.assert_close(loaded.predict_logits(images), expected, rtol=0, atol=0)
    classify = pipeline("image-classification", model=repo)
    assert classify(images[0], top_k=1)[0]["label"] == composed.predict(images[:1])[0]

    # A pinned module revision that is gone: the error names the module and the revision.
    config.members[0]["revision"] = "0" * 40
    config.save_pretrained(tmp_path / "broken")
    from hf_modular.compose import composed_image_processor

    composed_image_processor(config).save_pretrained(tmp_path / "broken")
    with pytest.raises(OSError, match=f"'dark' module of this composition \\({dark_repo} at revision 0000"):
        ComposedModel.from_pretrained(tmp_path / "broken")


def test_cli_compose_pushes_a_private_composition(hub_server, tmp_path, capsys):
    from hf_modular.cli import main

    modules = _modules(NAMES_A, 0)
    directories = []
    for label in ("dark", "bright"):
        modules[label].save_pretrained(tmp_path / f"{label}-module")
        directories.append(str(tmp_path / f"{label}-module"))
    repo_id = f"{DEFAULT_USER}/dark-bright"
    arguments = ["--output", str(tmp_path / "pair"), "--push-to", repo_id, "--private"]
    assert main(["-q", "compose", *directories, *arguments]) == 0
    assert HfApi().repo_info(repo_id).private is True
    assert ComposedModel.from_pretrained(repo_id).labels == ["dark", "bright"]  # local members travel inside
