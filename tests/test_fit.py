"""Composition of strangers: modules of parents that never saw each other's classes, fitted on a few labelled images
of the union of their classes; the fit round-trips, goes stale when a member changes, and refuses bad data."""

from __future__ import annotations

import copy
import json

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard

import hf_modular  # noqa: F401
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.compose.fitting import pooled_features
from hf_modular.compose.members import composed_image_processor, prepare_input
from hf_modular.decompose import decompose
from hf_modular.evaluation import evaluate
from hf_modular.models import image_mode
from tests.hub_server import DEFAULT_USER, HubServer, hub_server_fixture  # noqa: F401
from tests.test_decompose import image_dataset, tiny_config

ALL = ["dark", "bright", "mid", "dim"]
GREYS = {"dark": 20, "bright": 235, "mid": 128, "dim": 70}


def _data(labels: list[str], per_class: int, seed: int):
    values = [GREYS[label] for label in labels] * per_class
    return image_dataset(values, list(range(len(labels))) * per_class, noise=25, seed=seed, names=labels)


def _stranger_modules(first: list[str], second: list[str]) -> list[ModularResNetForImageClassification]:
    """Modules of two parents (different seeds, different widths) that each know only their own classes."""
    modules = []
    for seed, labels, widths in ((0, first, [4, 8]), (1, second, [6, 8])):
        torch.manual_seed(seed)
        parent = ModularResNetForImageClassification(
            tiny_config(widths=widths, stem_width=widths[0], id2label=dict(enumerate(labels)))
        ).eval()
        built = decompose(parent, _data(labels, 6, seed), samples_per_class=6, progress=False)
        modules.extend(built.values())
    return modules


@pytest.fixture(scope="module")
def strangers():
    return _stranger_modules(["dark", "bright"], ["mid", "dim"])


def test_fitting_makes_strangers_compose(strangers):
    composed = ComposedModel.from_modules(strangers)
    held_out = _data(ALL, 20, seed=7)
    vote = evaluate(composed, held_out, progress=False).top1
    options = {"dataset_revision": "v9", "dataset_config": "greys"}  # an in-memory dataset has neither: not recorded
    record = composed.fit(_data(ALL, 30, seed=3), images_per_class=20, progress=False, **options)
    assert (record["data"]["revision"], record["data"]["config_name"]) == (None, None)
    fitted = evaluate(composed, held_out, progress=False).top1
    assert fitted > vote and fitted >= 0.9, (vote, fitted)
    assert record["data"]["images"] == 80 and record["data"]["images_per_class"] == 20
    assert [entry["label"] for entry in record["members"]] == ALL
    assert len(record["heads"]["mid"]["weight"]) == strangers[2].config.num_features
    for member, original in zip(composed.members, strangers, strict=True):  # the members themselves are untouched
        assert member is original and member.config.head_type == "softmax"


def test_a_fitted_composition_round_trips_exactly(strangers, tmp_path):
    composed = ComposedModel.from_modules(strangers)
    composed.fit(_data(ALL, 10, seed=3), images_per_class=10, progress=False)
    composed.save_pretrained(tmp_path / "composed", materialize=True)
    reloaded = ComposedModel.from_pretrained(tmp_path / "composed")
    assert reloaded.config.fit == json.loads(json.dumps(composed.config.fit))
    pixel_values = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded.module_logits(pixel_values), composed.module_logits(pixel_values))
        assert torch.equal(
            reloaded.module_logits(pixel_values, shared=False), composed.module_logits(pixel_values, shared=False)
        )
    # Fitted in float32, loaded in a lower precision: the same members, so the fit holds (one float32 hash of the
    # rounded weights would call every member changed and refuse to answer).
    for dtype in (torch.bfloat16, torch.float16):
        lower = ComposedModel.from_pretrained(tmp_path / "composed", dtype=dtype)
        assert lower.members[0].fc.weight.dtype == dtype
        with torch.no_grad():
            assert lower.module_logits(pixel_values).shape == (6, len(ALL), 2)
    # A member that really changed still makes the fit stale, in any precision.
    edited = ComposedModel.from_pretrained(tmp_path / "composed", dtype=torch.bfloat16)
    with torch.no_grad():
        edited.members[1].fc.weight.mul_(2)
    with pytest.raises(ValueError, match=r"its fit is stale"), torch.no_grad():
        edited.module_logits(pixel_values)


def test_a_fitted_composition_round_trips_through_the_hub(strangers, hub_server: HubServer):
    composed = ComposedModel.from_modules(strangers)
    composed.fit(_data(ALL, 10, seed=3), images_per_class=10, progress=False)
    composed.push_to_hub(f"{DEFAULT_USER}/fitted-strangers")
    reloaded = ComposedModel.from_pretrained(f"{DEFAULT_USER}/fitted-strangers")
    images = _data(ALL, 3, seed=9)["image"]
    assert reloaded.predict(images) == composed.predict(images)
    with torch.no_grad():
        assert torch.equal(reloaded.predict_logits(images), composed.predict_logits(images))


def test_editing_a_fitted_composition_makes_the_fit_stale(strangers):
    composed = ComposedModel.from_modules(strangers)
    composed.fit(_data(ALL, 10, seed=3), images_per_class=10, progress=False)
    images = _data(ALL, 1, seed=9)["image"]
    composed.predict(images)
    other = _stranger_modules(["bright", "dark"], ["mid", "dim"])[1]  # another parent's 'dark' module
    composed.replace("dark", other)
    with pytest.raises(ValueError, match="fit is stale"):
        composed.predict(images)
    composed.fit(_data(ALL, 10, seed=3), images_per_class=10, progress=False)  # fitting again answers again
    composed.predict(images)
    composed.remove("dim")
    with pytest.raises(ValueError, match=r"\(dim changed since\)"):
        composed.predict(images)
    composed.drop_fit()  # dropping the fit answers with the members' own heads
    assert composed.config.fit is None and composed.config.rule == "vote"
    composed.predict(images)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda: _data(["dark", "bright", "mid"], 10, 3), r"no images of \['dim'\]"),
        (lambda: _data(ALL, 3, 3), "'dark' has 3 images"),
    ],
)
def test_bad_fit_data_is_named(strangers, data, message):
    composed = ComposedModel.from_modules(strangers)
    with pytest.raises(ValueError, match=message):
        composed.fit(data(), images_per_class=5, progress=False)
    assert composed.config.fit is None


def test_fit_data_with_classes_no_member_answers_is_refused(strangers):
    GREYS["white"] = 255
    try:
        data = _data([*ALL, "white"], 6, 3)
    finally:
        del GREYS["white"]
    composed = ComposedModel.from_modules(strangers)
    with pytest.raises(ValueError, match=r"images of \['white'\], classes no member answers.*select_classes"):
        composed.fit(data, images_per_class=5, progress=False)


def test_cli_compose_fit(strangers, tmp_path, capsys):
    for module in strangers:
        module.save_pretrained(tmp_path / module.config.provenance.target_label)
    _data(ALL, 10, seed=3).to_parquet(str(tmp_path / "fit.parquet"))
    modules = [str(tmp_path / label) for label in ALL]
    output = tmp_path / "composed"
    arguments = ["--fit", str(tmp_path / "fit.parquet"), "--images-per-class", "8"]
    assert main(["-q", "compose", *modules, "--output", str(output), *arguments]) == 0
    assert "Fitted each module's head on 32 images" in capsys.readouterr().out
    assert main(["info", str(output)]) == 0  # a composition is described too
    described = capsys.readouterr().out
    assert "composed of" in described and "fit" in described and "32 images" in described
    assert "vote, over the fitted heads" in described  # not the paper's vote over the modules' own heads
    fit = json.loads((output / "config.json").read_text())["fit"]
    assert fit["data"]["images_per_class"] == 8 and set(fit["heads"]) == set(ALL)
    assert (
        main(
            [
                "-q",
                "compose",
                *modules,
                "--output",
                str(tmp_path / "bad"),
                "--fit",
                str(tmp_path / "fit.parquet"),
                "--images-per-class",
                "50",
            ]
        )
        == 1
    )
    assert "has 10 images in the fit dataset" in capsys.readouterr().err

    # Replacing a module of a fitted composition: its fit would not cover the newcomer, so replace fits again
    # (--fit) or drops the fit (--drop-fit), and refuses to write otherwise; a materialized composition stays so.
    other_dark = _stranger_modules(["bright", "dark"], ["mid", "dim"])[1]  # another parent's 'dark' module
    other_dark.save_pretrained(tmp_path / "other-dark")
    before = (output / "config.json").read_text()
    assert main(["-q", "replace", str(output), "dark", str(tmp_path / "other-dark")]) == 1
    assert "was fitted (on 32 images of" in capsys.readouterr().err
    assert main(["-q", "replace", str(output), "dark", str(tmp_path / "bright"), "--drop-fit"]) == 1
    assert "The new module answers 'bright', not 'dark'" in capsys.readouterr().err
    assert (output / "config.json").read_text() == before  # nothing was written
    assert main(["-q", "compose", *modules, "--output", str(tmp_path / "inside"), "--materialize", *arguments]) == 0
    refit = ["--fit", str(tmp_path / "fit.parquet"), "--images-per-class", "8"]
    assert main(["-q", "replace", str(tmp_path / "inside"), "dark", str(tmp_path / "other-dark"), *refit]) == 0
    saved = json.loads((tmp_path / "inside" / "config.json").read_text())
    assert all("subfolder" in entry and "source" not in entry for entry in saved["members"])
    replaced = ComposedModel.from_pretrained(tmp_path / "inside")
    assert torch.equal(replaced.members[0].fc.weight, other_dark.fc.weight)
    replaced.predict(_data(ALL, 1, seed=9)["image"])  # fitted again: it answers
    assert main(["-q", "replace", str(output), "dark", str(tmp_path / "other-dark"), "--drop-fit"]) == 0
    assert json.loads((output / "config.json").read_text())["fit"] is None


def test_cli_fit_fits_a_stale_composition_again_as_it_was_fitted(strangers, tmp_path, capsys, hub_server):
    for module in strangers:
        module.save_pretrained(tmp_path / module.config.provenance.target_label)
    data = str(tmp_path / "fit" / "train.parquet")
    (tmp_path / "fit").mkdir()
    _data(ALL, 10, seed=3).to_parquet(data)
    HfApi().create_repo("user/greys", repo_type="dataset")
    HfApi().upload_folder(repo_id="user/greys", repo_type="dataset", folder_path=str(tmp_path / "fit"))
    composed = tmp_path / "composed"
    modules = [str(tmp_path / label) for label in ALL]
    fit = ["--fit", "user/greys", "--images-per-class", "6"]
    assert main(["-q", "compose", *modules, "--output", str(composed), *fit]) == 0
    first = json.loads((composed / "config.json").read_text())["fit"]
    read = HfApi().dataset_info("user/greys").sha
    assert first["data"]["revision"] == read and first["data"]["config_name"] is None
    card = ModelCard((composed / "README.md").read_text())  # the card says how it answers, and from which data
    assert f"24 images (6 per class) of `user/greys` at commit `{read[:12]}`, split `train`" in card.text
    assert card.data.datasets == ["user/greys"]
    # The dataset moves on (other images); fitting again still reads the commit the fit read.
    _data(ALL, 10, seed=5).to_parquet(data)
    moved = HfApi().upload_folder(repo_id="user/greys", repo_type="dataset", folder_path=str(tmp_path / "fit")).oid

    # A member edited on disk makes the fit stale: info says so and names the command that fits it again.
    _stranger_modules(["bright", "dark"], ["mid", "dim"])[1].save_pretrained(tmp_path / "dark")
    capsys.readouterr()
    assert main(["info", str(composed)]) == 0
    out = capsys.readouterr().out
    assert f"dark changed since; `hf-modular fit {composed}` fits it again" in out and f"user/greys@{read}" in out
    assert main(["info", str(composed), "--json"]) == 0  # the records, for scripts
    record = json.loads(capsys.readouterr().out)
    assert record["stale_members"] == ["dark"] and record["fit"]["data"]["revision"] == read
    assert record["load_error"] is None
    assert [entry["source"] for entry in record["members"]] == [str(tmp_path / label) for label in ALL]  # found there
    assert main(["-q", "evaluate", str(composed), "--dataset", data, "--split", "train"]) == 1
    assert "hf-modular fit DIR" in capsys.readouterr().err

    # With no options it repeats the last fit: its Hub dataset, split, images per class and seed.
    assert main(["-q", "fit", str(composed)]) == 0
    assert "on 24 images (6 per class, split train)" in capsys.readouterr().out
    again = json.loads((composed / "config.json").read_text())["fit"]
    same = ("name_or_path", "split", "revision", "images_per_class", "seed", "fingerprint")
    assert {key: again["data"][key] for key in same} == {key: first["data"][key] for key in same}
    assert again["members"] != first["members"] and again["heads"]["dark"] != first["heads"]["dark"]
    assert main(["-q", "fit", str(composed), "--dataset-revision", "main"]) == 0  # moved on, when asked
    latest = json.loads((composed / "config.json").read_text())["fit"]["data"]
    assert latest["revision"] == moved and latest["fingerprint"] != first["data"]["fingerprint"]
    assert main(["-q", "evaluate", str(composed), "--dataset", data, "--split", "train"]) == 0

    # replace --fit DATA repeats the last fit's images per class too, unless told otherwise.
    arguments = ["-q", "replace", str(composed), "dark", str(tmp_path / "dark"), "--fit", data]
    assert main(arguments) == 0
    assert json.loads((composed / "config.json").read_text())["fit"]["data"]["images_per_class"] == 6
    assert main([*arguments, "--images-per-class", "4"]) == 0
    assert json.loads((composed / "config.json").read_text())["fit"]["data"]["images_per_class"] == 4

    # The last fit's split is repeated for the same data only: after a fit on a test split, other data is read as
    # its own default split.
    held_out = str(tmp_path / "held-out" / "test.parquet")
    (tmp_path / "held-out").mkdir()
    _data(ALL, 10, seed=4).to_parquet(held_out)
    assert main(["-q", "fit", str(composed), "--dataset", held_out, "--split", "test"]) == 0
    assert main(["-q", "fit", str(composed), "--dataset", held_out]) == 0  # the 'test' of the last fit on it
    assert main(["-q", "fit", str(composed), "--dataset", data]) == 0  # train.parquet: not asked for 'test'
    capsys.readouterr()

    # Local data is recorded by its file name only, so fitting again asks for its path.
    assert main(["-q", "fit", str(composed)]) == 1
    assert "fitted on local data, ./train.parquet, and only its file name is recorded" in capsys.readouterr().err

    # --calibrate switches to the calibrated rule; --output writes elsewhere and leaves the composition as it was.
    before = (composed / "config.json").read_text()
    calibrate = ["--dataset", data, "--calibrate", "--output", str(tmp_path / "calibrated")]
    assert main(["-q", "fit", str(composed), *calibrate]) == 0
    calibrated = json.loads((tmp_path / "calibrated" / "config.json").read_text())
    assert calibrated["rule"] == "calibrated" and calibrated["fit"] is None
    assert set(calibrated["calibration"]) == set(ALL)
    assert (composed / "config.json").read_text() == before

    # Calibrating drops a fit (from Python too, and a path will do); `replace --calibrate` does the same; --drop
    # drops either.
    assert main(["-q", "fit", str(composed), "--dataset", data]) == 0
    loaded = ComposedModel.from_pretrained(composed)
    loaded.calibrate(data, progress=False)
    assert loaded.config.fit is None and loaded.config.rule == "calibrated"
    assert main(["-q", "replace", str(composed), "dark", str(tmp_path / "dark"), "--calibrate", data]) == 0
    replaced = json.loads((composed / "config.json").read_text())
    assert replaced["fit"] is None and replaced["rule"] == "calibrated"
    assert main(["-q", "fit", str(composed), "--drop"]) == 0
    dropped = json.loads((composed / "config.json").read_text())
    assert (dropped["fit"], dropped["rule"], dropped["calibration"]) == (None, "vote", None)
    capsys.readouterr()

    # A composition never fitted needs the data named; an --output over a member is refused before any work.
    assert main(["-q", "compose", *modules, "--output", str(tmp_path / "plain")]) == 0
    assert main(["-q", "fit", str(tmp_path / "plain")]) == 1
    assert "has not been fitted: give the labelled images to fit it on with --dataset DATA" in capsys.readouterr().err
    dim_before = (tmp_path / "dim" / "config.json").read_text()
    assert main(["-q", "fit", str(composed), "--dataset", data, "--output", str(tmp_path / "dim"), "--overwrite"]) == 1
    assert "would replace a module being composed" in capsys.readouterr().err
    assert (tmp_path / "dim" / "config.json").read_text() == dim_before
    assert main(["-q", "fit", "user/some-composition"]) == 1  # a Hub repo is not changed in place
    assert "is not a local directory, so it cannot be changed in place: give --output DIR" in capsys.readouterr().err
    both = ["--output", str(tmp_path / "both"), "--fit", data, "--calibrate", data]
    assert main(["-q", "compose", *modules, *both]) == 1
    assert "--fit and --calibrate are two ways" in capsys.readouterr().err and not (tmp_path / "both").exists()


def test_a_fitted_composition_moves_across_dtypes_and_still_trains(strangers):
    composed = ComposedModel.from_modules([copy.deepcopy(module) for module in strangers])
    composed.fit(_data(ALL, 10, seed=3), images_per_class=10, progress=False)
    images = _data(ALL, 2, seed=9)["image"]
    answer = composed.predict(images)  # builds the fitted heads under inference mode
    pixel_values = torch.rand(3, 3, 8, 8, requires_grad=True)
    composed(pixel_values).logits.sum().backward()  # ... yet they serve a call that needs gradients
    assert pixel_values.grad is not None
    composed.double()  # the same members in another dtype: the fit is not stale, and answers the same
    assert composed.predict(images) == answer
    assert composed.module_logits(pixel_values.detach().double()).dtype == torch.float64


def test_fitting_one_member_is_refused(strangers):
    with pytest.raises(ValueError, match="at least two members"):
        ComposedModel.from_modules(strangers[:1]).fit(_data(["dark"], 5, 3), images_per_class=5, progress=False)


def test_images_of_other_classes_are_refused_or_skipped(strangers):
    mixed = _data(ALL, 12, seed=4)
    extra = mixed.cast_column("label", datasets.ClassLabel(names=[*ALL, "other"]))
    extra = datasets.concatenate_datasets([extra, extra.select(range(4)).map(lambda row: {"label": 4})])
    composed = ComposedModel.from_modules(strangers)
    with pytest.raises(ValueError, match="classes no member answers.*other_classes='skip'"):
        composed.fit(extra, images_per_class=10, progress=False)
    record = composed.fit(extra, images_per_class=10, other_classes="skip", progress=False)
    assert record["data"]["images"] == 40


def test_predict_takes_images_arrays_and_files(strangers, tmp_path):
    composed = ComposedModel.from_modules(strangers)
    images = list(_data(ALL, 1, seed=5)["image"])
    arrays = [np.asarray(image) for image in images]
    expected = composed.predict(images)
    assert composed.predict(arrays) == expected
    files = []
    for index, image in enumerate(images):  # read as transformers' pipelines read them
        image.save(tmp_path / f"{index}.png")
        files.append(tmp_path / f"{index}.png")
    assert composed.predict(files) == composed.predict([str(path) for path in files]) == expected
    assert composed.predict(files[0]) == expected[:1]
    grey = [np.asarray(image.convert("L")) for image in images]  # (H, W) arrays: grey images, as PIL's "L" ones
    assert composed.predict(grey) == composed.predict([image.convert("L") for image in images])
    with pytest.raises(ValueError, match="No images were given"):
        composed.predict([])
    with pytest.raises(IsADirectoryError, match="is a folder: give its image files"):
        composed.predict(tmp_path)
    with pytest.raises(ValueError, match="top must be an integer >= 1"):
        composed.predict(files, top=0)
    with pytest.raises(FileNotFoundError, match=r"No such image file: .*missing\.png"):
        composed.predict([files[0], tmp_path / "missing.png"])
    with pytest.raises(ValueError, match=r"not float32.*composed\(pixel_values=\.\.\.\)"):
        composed.predict(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="Cannot read an image from a list in the list"):
        composed.predict([arrays[0].tolist()])


def test_fitting_sees_the_features_inference_computes_for_bfloat16_members(strangers):
    # fit() must prepare a member's input as module_logits does (in float32, cast last): rounding the [0, 1] pixels
    # to bfloat16 first shifts them by up to a grey level, and the heads would be fitted on features inference
    # never produces.
    members = [copy.deepcopy(module).to(torch.bfloat16) for module in strangers]
    composed = ComposedModel.from_modules(members)
    data = _data(ALL, 2, seed=5)
    fitted_on = pooled_features(members, composed.config, data, batch_size=64, progress=False)
    images = [image.convert(image_mode(composed.config.num_channels)) for image in data["image"]]
    pixel_values = composed_image_processor(composed.config)(images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        for member, found in zip(members, fitted_on, strict=True):
            features = member.forward_features(prepare_input(pixel_values, member))
            assert torch.equal(found, member.forward_head(features, pre_logits=True).float())


def test_a_fitted_composition_exports(strangers):
    # Its stale-fit check hashes the members' weights, which tracing cannot: a traced composition skips it.
    composed = ComposedModel.from_modules(strangers)
    composed.fit(_data(ALL, 6, seed=3), images_per_class=5, progress=False)
    x = torch.rand(2, 3, 8, 8)
    expected = composed.eval()(pixel_values=x).logits
    torch.testing.assert_close(torch.export.export(composed, (x,)).module()(x)[0], expected)
