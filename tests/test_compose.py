"""ComposedModel: modules from several parents, per-module preprocessing, replace/add/remove, save/load, pipeline."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

import hf_modular  # noqa: F401
from hf_modular import ComposedConfig, ComposedModel, ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.compose import composed_image_processor, top_k, vote
from hf_modular.decompose import decompose
from hf_modular.evaluation import evaluate
from hf_modular.models import image_processor_for
from tests.test_decompose import image_dataset, tiny_config

NAMES_A = ["dark", "bright", "mid"]
NAMES_B = ["sun", "night"]


def _modules(names, seed, **config):
    torch.manual_seed(seed)
    parent = ModularResNetForImageClassification(tiny_config(id2label=dict(enumerate(names)), **config)).eval()
    values = [30, 220, 128][: len(names)]
    data = image_dataset(values * 4, list(range(len(names))) * 4, noise=30, names=names)
    return decompose(parent, data, samples_per_class=4, progress=False)


@pytest.fixture(scope="module")
def modules_a():
    return _modules(NAMES_A, 0)


@pytest.fixture(scope="module")
def modules_b():
    # Another parent with other normalisation statistics: its modules must see their own preprocessing.
    return _modules(NAMES_B, 1, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])


def _images(count=6, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(count)]


def _expected_logits(modules, images):
    """Each module on its own processor's output: what a composition must reproduce."""
    columns = []
    for module in modules:
        pixel_values = image_processor_for(module.config)(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            columns.append(module(pixel_values).logits)
    return torch.stack(columns, dim=1)


def test_composition_across_parents_with_different_normalisation(modules_a, modules_b):
    members = [modules_a["dark"], modules_a["bright"], modules_b["sun"]]
    composed = ComposedModel.from_modules(members)
    assert composed.labels == ["dark", "bright", "sun"]
    images = _images()
    expected = _expected_logits(members, images)
    torch.testing.assert_close(composed.predict_logits(images), expected)
    assert composed.predict(images) == [composed.labels[i] for i in vote(expected).tolist()]
    # The tensor path: [0, 1] images from the composed processor, normalised inside per module.
    pixel_values = composed_image_processor(composed.config)(images, return_tensors="pt")["pixel_values"]
    assert pixel_values.min() >= 0 and pixel_values.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(composed.module_logits(pixel_values), expected, rtol=1e-4, atol=1e-4)
        logits = composed(pixel_values).logits
    assert logits.argmax(1).tolist() == vote(expected).tolist()
    top = composed.predict(images, top=2)
    assert [row[0] for row in top] == composed.predict(images)


def _composed_and_pixel_values(modules_a, modules_b):
    composed = ComposedModel.from_modules([modules_a["dark"], modules_a["bright"], modules_b["sun"]])
    pixel_values = composed_image_processor(composed.config)(_images(), return_tensors="pt")["pixel_values"]
    return composed, pixel_values


def test_forward_follows_config_return_dict(modules_a, modules_b):
    composed, pixel_values = _composed_and_pixel_values(modules_a, modules_b)
    with torch.no_grad():
        logits = composed(pixel_values).logits
        composed.config.return_dict = False  # what transformers' common tests set: the config decides by default
        as_tuple = composed(pixel_values)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], logits)
        assert isinstance(composed(pixel_values, return_dict=True), ImageClassifierOutputWithNoAttention)
        composed.config.return_dict = True
        assert isinstance(composed(pixel_values, return_dict=False), tuple)


@pytest.mark.parametrize("rule", ["vote", "calibrated"])
def test_forward_loss_follows_config_problem_type(modules_a, modules_b, rule):
    composed, pixel_values = _composed_and_pixel_values(modules_a, modules_b)
    if rule == "calibrated":
        composed.config.calibration = {label: [2.0, -1.0] for label in composed.labels}
        composed.config.rule = rule
    with torch.no_grad():
        log_probabilities = composed.scores(composed.module_logits(pixel_values))  # what predict ranks
    labels = torch.tensor([0, 1, 2, 2, 1, 0])

    # Unset, integer labels: single-label classification, the cross-entropy of the normalised probabilities.
    output = composed(pixel_values, labels=labels)
    assert composed.config.problem_type == "single_label_classification"
    torch.testing.assert_close(output.logits, log_probabilities)
    torch.testing.assert_close(output.loss, F.cross_entropy(log_probabilities, labels))
    output.loss.backward()  # the loss reaches the modules' weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in composed.members[0].parameters())
    as_tuple = composed(pixel_values, labels=labels, return_dict=False)
    torch.testing.assert_close(as_tuple[0], output.loss)

    # Multi-label: the logits are log-odds, so that their sigmoid is each module's own-class probability (the
    # ranking is unchanged) and the loss is the binary cross-entropy of those probabilities.
    targets = (labels[:, None] == torch.arange(3)).float()
    targets[0, 2] = 1.0  # an image of two classes
    composed.config.problem_type = "multi_label_classification"
    with torch.no_grad():
        output = composed(pixel_values, labels=targets)
    torch.testing.assert_close(output.logits.sigmoid(), log_probabilities.exp())
    assert output.logits.argmax(1).tolist() == log_probabilities.argmax(1).tolist()
    torch.testing.assert_close(output.loss, F.binary_cross_entropy(log_probabilities.exp(), targets))
    # transformers' pipeline reads a multi-label model's logits through a sigmoid.
    classify = pipeline(
        "image-classification", model=composed, image_processor=composed_image_processor(composed.config)
    )
    answers = classify(_images()[0], top_k=3)
    scores = {answer["label"]: answer["score"] for answer in answers}
    assert scores == pytest.approx(
        dict(zip(composed.labels, log_probabilities[0].exp().tolist(), strict=True)), abs=1e-5
    )
    composed.config.problem_type = None  # float labels: inferred as multi-label, as transformers does
    with torch.no_grad():
        inferred = composed(pixel_values, labels=targets)
    assert composed.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(inferred.logits, output.logits)
    torch.testing.assert_close(inferred.loss, output.loss)

    composed.config.problem_type = "regression"
    with torch.no_grad():
        output = composed(pixel_values, labels=targets)
    torch.testing.assert_close(output.logits, log_probabilities)
    torch.testing.assert_close(output.loss, F.mse_loss(log_probabilities, targets))


def test_replace_add_remove(modules_a, modules_b):
    composed = ComposedModel.from_modules([modules_a["dark"], modules_a["bright"]])
    images = _images()
    composed.add(modules_b["sun"])
    assert composed.labels == ["dark", "bright", "sun"]
    assert composed.config.id2label == {0: "dark", 1: "bright", 2: "sun"}
    with pytest.raises(ValueError, match="The new module answers 'mid', not 'bright'.*relabel=True"):
        composed.replace("bright", modules_a["mid"])  # a module of another class is not a replacement ...
    assert composed.members[1] is modules_a["bright"]
    composed.replace("bright", modules_a["mid"], relabel=True)  # ... unless asked: the slot keeps its label
    assert composed.labels == ["dark", "bright", "sun"]
    torch.testing.assert_close(
        composed.predict_logits(images)[:, 1], _expected_logits([modules_a["mid"]], images)[:, 0]
    )
    composed.remove("dark")
    assert composed.labels == ["bright", "sun"] and len(composed.members) == 2
    with pytest.raises(KeyError, match="No module answers 'zebra'"):
        composed.remove("zebra")
    with pytest.raises(ValueError, match="Several modules claim \\['sun'\\]"):
        composed.add(modules_b["sun"])
    composed.add(modules_b["sun"], label="sun-2")
    assert composed.labels[-1] == "sun-2"


def test_rename(modules_a, modules_b):
    composed = ComposedModel.from_modules([modules_a["dark"], modules_b["sun"]], rename={"sun": "daylight"})
    assert composed.labels == ["dark", "daylight"]
    assert composed.config.label2id == {"dark": 0, "daylight": 1}
    with pytest.raises(ValueError, match=r"\(--rename\) names \[.moon.\], which no module answers"):
        ComposedModel.from_modules([modules_a["dark"], modules_b["sun"]], rename={"moon": "night"})
    # Two modules of one class (say from two parents) answer as two labels when each is given its own.
    twins = ComposedModel.from_modules([modules_a["dark"], modules_a["dark"]], labels=["dark", "dark-2"])
    assert twins.labels == ["dark", "dark-2"]
    twins.replace("dark-2", modules_a["dark"])  # a renamed slot takes a module of its own class
    renamed = ComposedModel.from_modules([modules_a["dark"], modules_b["sun"]], rename={"dark": "black"})
    renamed.replace("black", modules_a["dark"])
    with pytest.raises(ValueError, match=r"\(--labels\) names 1 label\(s\) for 2 modules"):
        ComposedModel.from_modules([modules_a["dark"], modules_b["sun"]], labels=["dark"])


def test_a_composition_of_local_modules_survives_moving_it_or_its_work_folder(
    tmp_path, modules_a, modules_b, capsys, caplog
):
    work = tmp_path / "work"
    modules_a["dark"].save_pretrained(work / "modules" / "dark-module")
    modules_b["sun"].save_pretrained(work / "modules" / "sun-module")
    composed = ComposedModel.from_modules([work / "modules" / "dark-module", work / "modules" / "sun-module"])
    expected = composed.predict_logits(_images())

    def members(directory: Path) -> list[dict]:
        return json.loads((directory / "config.json").read_text())["members"]

    def same_answers(directory: Path) -> None:
        loaded = ComposedModel.from_pretrained(directory)
        torch.testing.assert_close(loaded.predict_logits(_images()), expected, rtol=0, atol=0)

    composed.save_pretrained(work / "pair")
    sources = [entry["source"] for entry in members(work / "pair")]
    assert sources == ["../modules/dark-module", "../modules/sun-module"]  # never read as Hub repo ids
    assert members(work / "pair")[0]["absolute_path"] == str((work / "modules" / "dark-module").resolve())
    composed.save_pretrained(work / "modules" / "inner")
    assert members(work / "modules" / "inner")[0]["source"] == "../dark-module"

    # The composition alone moves: its modules are where they were.
    shutil.move(work / "pair", tmp_path / "archive" / "pair")
    same_answers(tmp_path / "archive" / "pair")
    # The whole work folder moves: the composition finds its modules beside it.
    shutil.move(tmp_path / "archive" / "pair", work / "pair")
    shutil.move(work, tmp_path / "moved")
    same_answers(tmp_path / "moved" / "pair")
    loaded = ComposedModel.from_pretrained(tmp_path / "moved" / "pair")
    assert loaded.config.members[0]["source"] == str((tmp_path / "moved" / "modules" / "dark-module").resolve())
    loaded.save_pretrained(tmp_path / "elsewhere" / "pair")  # saved elsewhere: relative to its new place
    assert members(tmp_path / "elsewhere" / "pair")[1]["source"] == "../../moved/modules/sun-module"
    same_answers(tmp_path / "elsewhere" / "pair")

    # Saved through a symbolic link, it is written where the link leads, and the link stays.
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "deep" / "er", target_is_directory=True)
    loaded.save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "deep" / "er" / "config.json").is_file()
    assert not [entry.name for entry in tmp_path.iterdir() if entry.name.startswith(".")]  # nothing left behind
    same_answers(tmp_path / "link")

    # A module changed on disk since the composition was saved: it answers with it as it is now, and says so.
    ours = logging.getLogger("hf_modular")  # a CLI test may have stopped it propagating to pytest's handler
    ours.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="hf_modular"):
            ComposedModel.from_pretrained(tmp_path / "elsewhere" / "pair")
            ComposedModel.from_pretrained(tmp_path / "elsewhere" / "pair", dtype=torch.bfloat16)  # rounded, the same
            assert "changed" not in caplog.text
            modules_a["dark"].save_pretrained(tmp_path / "moved" / "modules" / "sun-module")  # another module there
            ComposedModel.from_pretrained(tmp_path / "elsewhere" / "pair")
            assert (
                "The 'sun' module at " in caplog.text and "has changed since this composition was saved" in caplog.text
            )
    finally:
        ours.removeHandler(caplog.handler)

    # Both places gone, for both modules: one error names every module and its places.
    shutil.rmtree(tmp_path / "moved" / "modules")
    missing = r"in none of the places it recorded: 'dark' \(at [^;]*dark-module\); 'sun' \(at [^;]*sun-module\)\."
    with pytest.raises(FileNotFoundError, match=missing):
        ComposedModel.from_pretrained(tmp_path / "elsewhere" / "pair")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "elsewhere" / "pair")]) == 1  # what it records, then why it cannot load
    captured = capsys.readouterr()
    assert "sun: ../../moved/modules/sun-module" in captured.out and "in none of the places" in captured.err
    assert main(["info", str(tmp_path / "elsewhere" / "pair"), "--json"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["stale_members"] is None and record["members"][1]["source"] == "../../moved/modules/sun-module"
    assert "in none of the places it recorded" in record["load_error"]  # a script reading the JSON alone knows why


def test_bad_compositions(tmp_path, modules_a):
    with pytest.raises(ValueError, match=r"are \(2, 4, 8, 8\), but a composition takes \(batch, 3, height"):
        ComposedModel.from_modules(list(modules_a.values()))(pixel_values=torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="at least one module"):
        ComposedModel.from_modules([])
    with pytest.raises(ValueError, match="Several modules claim"):
        ComposedModel.from_modules([modules_a["dark"], modules_a["dark"]])
    parent = ModularResNetForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="not a class module"):
        ComposedModel.from_modules([parent])
    grey = _modules(NAMES_B, 2, num_channels=1, image_mean=[0.5], image_std=[0.25])["sun"]
    with pytest.raises(ValueError, match="different numbers of input channels"):
        ComposedModel.from_modules([modules_a["dark"], grey])
    composed = ComposedModel.from_modules([modules_a["dark"]])
    with pytest.raises(ValueError, match="last module"):
        composed.remove("dark")


def test_save_and_load_by_reference_and_materialized(tmp_path, modules_a, modules_b):
    for label, module in [("dark", modules_a["dark"]), ("sun", modules_b["sun"])]:
        module.save_pretrained(tmp_path / "hub" / f"{label}-module")
    composed = ComposedModel.from_modules([tmp_path / "hub" / "dark-module", tmp_path / "hub" / "sun-module"])
    images = _images()
    expected = composed.predict_logits(images)

    composed.save_pretrained(tmp_path / "by-reference")
    saved = sorted(p.name for p in (tmp_path / "by-reference").iterdir())
    assert saved == ["README.md", "config.json", "preprocessor_config.json"]  # a local composition has its card
    card = (tmp_path / "by-reference" / "README.md").read_text()
    assert "`dark-module` (a local directory)" in card and str(tmp_path) not in card
    assert "The modules' answers are combined by the paper's vote" in card
    (tmp_path / "by-reference" / "README.md").unlink()
    assert main(["-q", "card", str(tmp_path / "by-reference"), "--repo-id", "me/dark-sun"]) == 0
    assert 'ComposedModel.from_pretrained("me/dark-sun")' in (tmp_path / "by-reference" / "README.md").read_text()
    composed.save_pretrained(tmp_path / "materialized", materialize=True)
    assert (tmp_path / "materialized" / "modules" / "dark-module" / "model.safetensors").is_file()
    card = (tmp_path / "materialized" / "modules" / "dark-module" / "README.md").read_text()
    assert "**class module** for `dark`" in card
    parents = re.search(r"Decomposed from: .*\.", (tmp_path / "by-reference" / "README.md").read_text())
    assert parents and parents.group() in (tmp_path / "materialized" / "README.md").read_text()  # stored, still named
    for directory in ("by-reference", "materialized"):
        loaded = ComposedModel.from_pretrained(tmp_path / directory)
        assert loaded.labels == ["dark", "sun"]
        torch.testing.assert_close(loaded.predict_logits(images), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="labels cannot be set when loading one"):  # not silently ignored
        AutoModelForImageClassification.from_pretrained(tmp_path / "materialized", num_labels=3)

    # In-memory modules have no source to point at: they are stored inside the directory.
    in_memory = ComposedModel.from_modules([modules_a["dark"], modules_b["sun"]])
    in_memory.save_pretrained(tmp_path / "in-memory")
    assert (tmp_path / "in-memory" / "modules" / "sun-module" / "config.json").is_file()

    classifier = pipeline("image-classification", model=str(tmp_path / "materialized"))
    answers = classifier(images[0], top_k=2)
    assert {answer["label"] for answer in answers} == {"dark", "sun"}
    assert answers[0]["label"] == composed.predict(images[:1])[0]

    shutil.rmtree(tmp_path / "hub" / "sun-module")  # a referenced module that is gone
    with pytest.raises(OSError, match=r"in none of the places it recorded: 'sun' \(at .*sun-module\)\."):
        ComposedModel.from_pretrained(tmp_path / "by-reference")
    assert ComposedModel.from_pretrained(tmp_path / "materialized").labels == ["dark", "sun"]

    # A composition that stores its modules goes on storing them when saved again, a module replaced since
    # included.
    stored = ComposedModel.from_pretrained(tmp_path / "materialized")
    assert stored.stores_its_modules and not composed.stores_its_modules
    # Self-contained because its modules had no source to point at: it stays self-contained too.
    assert ComposedModel.from_pretrained(tmp_path / "in-memory").stores_its_modules
    stored.replace("dark", tmp_path / "hub" / "dark-module")
    stored.save_pretrained(tmp_path / "materialized")
    members = json.loads((tmp_path / "materialized" / "config.json").read_text())["members"]
    assert all(set(entry) == {"label", "subfolder", "parent"} for entry in members), members
    shutil.rmtree(tmp_path / "hub")  # nothing outside it is needed
    torch.testing.assert_close(
        ComposedModel.from_pretrained(tmp_path / "materialized").predict_logits(images), expected, rtol=0, atol=0
    )


def test_calibrated_rule(tmp_path, modules_a, modules_b):
    from hf_modular.compose import collect_module_logits

    composed = ComposedModel.from_modules([modules_a["dark"], modules_a["bright"], modules_b["night"]])
    data = image_dataset([30, 220, 90] * 6, [0, 1, 2] * 6, noise=40, names=["dark", "bright", "night"])
    module_logits, labels = collect_module_logits(composed, data, progress=False)
    assert module_logits.shape == (18, 3, 2) and labels.tolist() == [0, 1, 2] * 6

    def mean_nll(scores: torch.Tensor) -> float:  # how well each module's own-class probability fits the data
        targets = (labels[:, None] == torch.arange(3)).float()
        return F.binary_cross_entropy(scores.exp().clamp(1e-6, 1 - 1e-6), targets).item()

    before = mean_nll(composed.scores(module_logits))
    calibration = composed.calibrate(data, progress=False)
    assert composed.config.rule == "calibrated" and list(calibration) == composed.labels
    scores = composed.scores(module_logits)
    assert mean_nll(scores) < before
    images = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (25, 200, 95, 140)]
    expected = composed.scores(composed.predict_logits(images)).argmax(1).tolist()
    assert composed.predict(images) == [composed.labels[i] for i in expected]
    accuracy = evaluate(composed, data, progress=False)
    assert accuracy.top1 == pytest.approx((scores.argmax(1) == labels).float().mean().item())

    composed.save_pretrained(tmp_path / "calibrated")
    loaded = ComposedModel.from_pretrained(tmp_path / "calibrated")
    assert loaded.config.rule == "calibrated" and loaded.config.calibration == composed.config.calibration
    assert loaded.predict(images) == composed.predict(images)

    loaded.replace("night", modules_b["sun"], relabel=True)
    with pytest.raises(ValueError, match=r"modules for \['night'\] have no calibration"):
        loaded.predict(images)
    with pytest.raises(StrictDataclassClassValidationError, match="rule must be one of"):
        ComposedConfig(rule="softmax")


def test_cli_compose_replace_evaluate(tmp_path, modules_a, capsys, caplog):
    from hf_modular.cli import main

    for label in NAMES_A:
        modules_a[label].save_pretrained(tmp_path / f"{label}-module")
    data = image_dataset([30, 220, 128] * 4, [0, 1, 2] * 4, noise=30)
    data.to_parquet(str(tmp_path / "test.parquet"))
    directories = [str(tmp_path / f"{label}-module") for label in ("dark", "bright")]
    assert main(["-q", "compose", *directories, "--output", str(tmp_path / "composed")]) == 0
    assert ComposedModel.from_pretrained(tmp_path / "composed").labels == ["dark", "bright"]
    capsys.readouterr()
    assert (
        main(["-q", "evaluate", str(tmp_path / "composed"), "--dataset", str(tmp_path / "test.parquet"), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 8  # only the rows of the composition's two classes
    assert set(report["per_class"]) == {"dark", "bright"}
    # A class the dataset names otherwise is not silently left out of the measure.
    renamed = data.cast_column("label", datasets.ClassLabel(names=["dim", "bright", "mid"]))
    ours = logging.getLogger("hf_modular")
    ours.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="hf_modular"):
            assert evaluate(ComposedModel.from_pretrained(tmp_path / "composed"), renamed, progress=False).count == 4
        assert "The dataset has no label named 'dark'" in caplog.text and "rename" in caplog.text
    finally:
        ours.removeHandler(caplog.handler)
    code = main(["-q", "replace", str(tmp_path / "composed"), "bright", str(tmp_path / "mid-module"), "--relabel"])
    assert code == 0
    replaced = ComposedModel.from_pretrained(tmp_path / "composed")
    assert replaced.labels == ["dark", "bright"]
    assert replaced.members[1].config.provenance.target_label == "mid"
    calibrate = ["--calibrate", str(tmp_path / "test.parquet"), "--calibrate-split", "test"]
    assert main(["-q", "compose", *directories, "--output", str(tmp_path / "calibrated"), *calibrate]) == 0
    calibrated = ComposedModel.from_pretrained(tmp_path / "calibrated")
    assert calibrated.config.rule == "calibrated" and sorted(calibrated.config.calibration) == ["bright", "dark"]
    assert main(["replace", str(tmp_path / "composed"), "zebra", str(tmp_path / "mid-module")]) == 1
    assert "error: No module answers 'zebra'" in capsys.readouterr().err  # the message, not a KeyError's repr
    assert main(["compose", *directories, "--output", str(tmp_path / "x"), "--rename", "dark"]) == 1
    assert "--rename takes OLD=NEW pairs" in capsys.readouterr().err
    over_a_member = ["--output", directories[0], "--overwrite"]
    assert main(["replace", str(tmp_path / "composed"), "dark", directories[0], *over_a_member]) == 1
    assert "would replace a module being composed" in capsys.readouterr().err
    assert (tmp_path / "dark-module" / "model.safetensors").is_file()
    for rename in (["--rename", "dark=black", "--rename", "bright=white"], ["--rename", "dark=black,bright=white"]):
        assert main(["-q", "compose", *directories, "--output", str(tmp_path / "bw"), *rename, "--overwrite"]) == 0
        assert ComposedModel.from_pretrained(tmp_path / "bw").labels == ["black", "white"]
    twins = [directories[0], directories[0], "--labels", "dark, dark-2"]
    assert main(["-q", "compose", *twins, "--output", str(tmp_path / "twins")]) == 0
    assert ComposedModel.from_pretrained(tmp_path / "twins").labels == ["dark", "dark-2"]
    assert main(["evaluate", directories[0], "--dataset", str(tmp_path / "test.parquet")]) == 1
    assert "This is the 'dark' module: it answers 'dark' or 'rest'" in capsys.readouterr().err
    # A calibrated composition is calibrated again (--calibrate) or answers by the vote (--drop-fit) after replace.
    assert main(["-q", "replace", str(tmp_path / "calibrated"), "dark", directories[0]]) == 1
    assert "is calibrated, and its calibration would not cover the new module" in capsys.readouterr().err
    assert main(["-q", "replace", str(tmp_path / "calibrated"), "dark", directories[0], *calibrate]) == 0
    assert sorted(ComposedModel.from_pretrained(tmp_path / "calibrated").config.calibration) == ["bright", "dark"]
    # A one-module composition that stores its module goes on storing it.
    assert main(["-q", "compose", directories[0], "--output", str(tmp_path / "one"), "--materialize"]) == 0
    assert main(["-q", "replace", str(tmp_path / "one"), "dark", directories[0]]) == 0
    assert "subfolder" in json.loads((tmp_path / "one" / "config.json").read_text())["members"][0]
    odd = tmp_path / "me@home" / "dark-module"  # a local path with '@' is a path, not repo@revision
    modules_a["dark"].save_pretrained(odd)
    assert ComposedModel.from_modules([odd]).labels == ["dark"]


def test_a_decomposition_output_composes_as_all_its_modules_in_class_order(tmp_path, capsys):
    from hf_modular.cli import main
    from hf_modular.decompose import decompose_to_directory

    torch.manual_seed(0)
    names = ["zebra", "apple", "mid"]  # class order differs from the folders' alphabetical order
    parent = ModularResNetForImageClassification(tiny_config(id2label=dict(enumerate(names)))).eval()
    data = image_dataset([30, 220, 128] * 4, [0, 1, 2] * 4, noise=30, names=names)
    decompose_to_directory(parent, data, tmp_path / "out", samples_per_class=4, progress=False)
    composed = ComposedModel.from_modules([tmp_path / "out"])
    assert composed.labels == names
    pixel_values = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    by_folder = ComposedModel.from_modules([tmp_path / "out" / f"{name}-module" for name in names])
    torch.testing.assert_close(composed.module_logits(pixel_values), by_folder.module_logits(pixel_values))
    assert main(["-q", "evaluate", str(tmp_path / "out"), "--dataset", "unused"]) == 1  # refused, with the way on
    assert f"hf-modular compose {tmp_path / 'out'} --output" in capsys.readouterr().err
    assert main(["-q", "compose", str(tmp_path / "out"), "--output", str(tmp_path / "composed")]) == 0
    assert ComposedModel.from_pretrained(tmp_path / "composed").labels == names
    (tmp_path / "out" / "decomposition.json").unlink()  # as a decomposition stopped before its report leaves it
    assert main(["-q", "compose", str(tmp_path / "out"), "--output", str(tmp_path / "partial")]) == 1
    assert "a decomposition that has not finished. Rerun it" in capsys.readouterr().err


def test_load_from_a_local_subfolder_with_dtype(tmp_path, modules_a, modules_b):
    composed = ComposedModel.from_modules([modules_a["dark"], modules_b["sun"]])
    composed.save_pretrained(tmp_path / "repo" / "compositions" / "dark-sun", materialize=True)
    loaded = ComposedModel.from_pretrained(tmp_path / "repo", subfolder="compositions/dark-sun", dtype=torch.float64)
    assert loaded.labels == composed.labels
    assert all(next(member.parameters()).dtype == torch.float64 for member in loaded.members)
    composition_dir = tmp_path / "repo" / "compositions" / "dark-sun"
    module = ModularResNetForImageClassification.from_pretrained(composition_dir, subfolder="modules/dark-module")
    assert module.config.provenance.target_label == "dark"


@pytest.mark.parametrize("rule", ["vote", "calibrated"])
def test_half_precision_module_logits_are_scored_as_finely_as_float32(modules_a, rule):
    # In float16 both own-class probabilities below round to 1.0: scored in float16 the two modules would tie and
    # argmax would pick the first; the loss of such scores is NaN where a probability underflows to 0.
    composed = ComposedModel.from_modules([modules_a["dark"], modules_a["bright"]])
    if rule == "calibrated":
        composed.config.calibration, composed.config.rule = {"dark": [1.0, 0.0], "bright": [1.0, 0.0]}, rule
    logits = torch.tensor([[[9.0, 0.0], [12.0, 0.0]], [[0.0, 30.0], [-20.0, 0.0]]])
    for dtype in (torch.float16, torch.bfloat16):
        half = composed.scores(logits.to(dtype))
        assert half.dtype == torch.float32 and torch.isfinite(half).all()
        assert half.argmax(1).tolist() == composed.scores(logits).argmax(1).tolist() == [1, 1]
    assert composed.scores(logits.double()).dtype == torch.float64
    # The paper's vote and top-k, which evaluate_composition reports, rank as the composition does.
    confident = torch.tensor([[[20.0, 0.0], [25.0, 0.0]]])  # both float32 probabilities round to 1.0
    assert vote(confident).tolist() == [1] and top_k(confident).tolist() == [[1, 0]]


def test_a_composition_compiles_and_exports(modules_a, modules_b):
    # Shared execution compares weights and branches on the masks that fired, which tracing cannot follow: a traced
    # composition runs its members alone, with the same answer. A fresh composition has no plan built yet.
    x, members = torch.rand(3, 3, 8, 8), [*modules_a.values(), *modules_b.values()]
    expected = ComposedModel.from_modules(members).eval()(pixel_values=x).logits
    compiled = torch.compile(ComposedModel.from_modules(members).eval(), backend="eager")
    torch.testing.assert_close(compiled(pixel_values=x).logits, expected)
    exported = torch.export.export(ComposedModel.from_modules(members).eval(), (x,))
    torch.testing.assert_close(exported.module()(x)[0], expected)
