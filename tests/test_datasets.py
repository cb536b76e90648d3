"""What a `datasets` user passes is taken as they mean it: a DatasetDict's split, a Hub dataset's configuration and
commit, DataLoader workers; a streaming dataset is refused with what to do instead."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi

import hf_modular
from hf_modular import ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.data import load_image_dataset, select_classes
from hf_modular.decompose import continuous_learning, planned_modules
from hf_modular.evaluation import evaluate
from hf_modular.train import train
from tests.conftest import randomize_
from tests.hub_server import hub_server_fixture  # noqa: F401
from tests.test_decompose import dark_bright_dataset, tiny_config

PACKAGE = Path(hf_modular.__file__).parent


@pytest.fixture(scope="module")
def parent() -> ModularResNetForImageClassification:
    torch.manual_seed(0)
    return randomize_(ModularResNetForImageClassification(tiny_config()).eval())


def test_a_dataset_dict_gives_the_split_asked_for(parent):
    splits = datasets.DatasetDict({"train": dark_bright_dataset(), "test": dark_bright_dataset().select(range(6))})
    assert len(load_image_dataset(splits, split="test")) == 6
    with pytest.raises(ValueError, match=r"no 'validation' split; its splits are \['train', 'test'\]"):
        load_image_dataset(splits, split="validation")
    modules = hf_modular.decompose(parent, splits, samples_per_class=6, classes=["dark"], progress=False)
    assert modules["dark"].config.provenance.dataset.rows == 18
    with pytest.raises(TypeError, match=r"Pass one split of the DatasetDict \(e.g. dataset\['test'\]\)"):
        evaluate(parent, splits, progress=False)


def _with_two_of_each_kind(data: datasets.Dataset) -> datasets.Dataset:
    """A thumbnail beside each image (a black square: no class is told by it) and a coarse label beside each label,
    as in CIFAR-100's fine_label and coarse_label."""
    features = datasets.Features(
        {**data.features, "thumbnail": datasets.Image(), "coarse": datasets.ClassLabel(names=["any"])}
    )
    columns = {
        **data.to_dict(),
        "image": data["image"],
        "thumbnail": [image.resize((4, 4)).point(lambda _: 0) for image in data["image"]],
        "coarse": [0] * len(data),
    }
    return datasets.Dataset.from_dict(columns, features=features)


def test_a_dataset_with_several_image_or_label_columns_says_which_to_use(parent, tmp_path, capsys):
    data = _with_two_of_each_kind(dark_bright_dataset())
    with pytest.raises(
        ValueError, match=r"several image columns, \['image', 'thumbnail'\]: say which .*--image-column"
    ):
        hf_modular.decompose(parent, data, samples_per_class=6, progress=False)
    with pytest.raises(ValueError, match=r"several ClassLabel columns, \['label', 'coarse'\]: .*--label-column"):
        evaluate(parent, data, image_column="image", progress=False)
    columns = {"image_column": "image", "label_column": "label"}
    plain = evaluate(parent, dark_bright_dataset(), progress=False)
    assert evaluate(parent, data, progress=False, **columns) == plain
    # Every function that reads labelled images takes them: the compact strategy (whose distillation reads the
    # images alone), composition fits and calibration, continuous learning, selection by class.
    compact = hf_modular.decompose(
        parent, data, strategy="channel", samples_per_class=6, distill_steps=2, progress=False, **columns
    )
    modules = hf_modular.decompose(parent, data, samples_per_class=6, progress=False, **columns)
    composed = hf_modular.ComposedModel.from_modules([compact["dark"], modules["bright"]])
    fitted = composed.fit(data, images_per_class=3, other_classes="skip", progress=False, **columns)
    assert fitted["data"]["images"] == 6
    assert set(composed.calibrate(data, progress=False, **columns)) == {"dark", "bright"}
    assert len(continuous_learning([modules["dark"], modules["mid"]], data, progress=False, **columns)) == 2
    assert len(select_classes(data, ["dark"], label_column="label")) == 6

    # Every command that reads labelled images takes the two columns: decompose (its evaluation too), train, evaluate.
    data.to_parquet(str(tmp_path / "data" / "train.parquet"))
    data.select(range(9)).to_parquet(str(tmp_path / "data" / "test.parquet"))
    parent.save_pretrained(tmp_path / "parent")
    flags = ["--dataset", str(tmp_path / "data"), "--image-column", "image", "--label-column", "label"]
    decompose = ["-q", "decompose", str(tmp_path / "parent"), *flags, "--samples-per-class", "6"]
    assert main([*decompose, "--eval-split", "test", "--output", str(tmp_path / "modules")]) == 0
    assert json.loads((tmp_path / "modules" / "decomposition.json").read_text())["evaluation"]["images"] == 9
    capsys.readouterr()
    assert main(["-q", "evaluate", str(tmp_path / "parent"), *flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 9
    assert main(["-q", "evaluate", str(tmp_path / "parent"), *flags]) == 0
    shown = capsys.readouterr().out
    assert "top-1" in shown and "top-5" not in shown  # three classes: every image is in its top 5
    assert main(["-q", "evaluate", str(tmp_path / "parent"), *flags, "--label-column", "thumbnail"]) == 1
    assert "The column 'thumbnail' holds images, not labels" in capsys.readouterr().err
    train_flags = ["--epochs", "1", "--batch-size", "9", "--output", str(tmp_path / "trained")]
    assert main(["-q", "train", *flags, "--preset", "modular_resnet20", *train_flags]) == 0
    trained = ModularResNetForImageClassification.from_pretrained(tmp_path / "trained")
    assert list(trained.config.id2label.values()) == ["dark", "bright", "mid"]
    recorded = trained.config.training
    assert (recorded["dataset"]["image_column"], recorded["eval_dataset"]["label_column"]) == ("image", "label")
    # Columns found, not given, are each dataset's own: an evaluation set may name its columns otherwise.
    renamed = dark_bright_dataset().rename_columns({"image": "picture"})
    history = train(trained, dark_bright_dataset(), eval_dataset=renamed, epochs=1, batch_size=9, progress=False)
    assert "top1" in history.final
    assert (
        main(["-q", "decompose", str(tmp_path / "parent"), "--dataset", str(tmp_path / "data"), "--output", "x"]) == 1
    )
    assert "several image columns" in capsys.readouterr().err


def test_a_streaming_dataset_is_refused_with_what_to_do(parent):
    stream = dark_bright_dataset().to_iterable_dataset()
    for run in (
        lambda: hf_modular.decompose(parent, stream, progress=False),
        lambda: evaluate(parent, stream, progress=False),
        lambda: train(parent, stream, epochs=1, progress=False),
    ):
        with pytest.raises(TypeError, match="streaming .* has no random access.*Dataset.from_generator"):
            run()


def test_images_kept_undecoded_are_read_as_decoded_ones(parent):
    # Image(decode=False) holds each image's bytes (or path): every entry point decodes them itself.
    data = dark_bright_dataset()
    raw = data.cast_column("image", datasets.Image(decode=False))
    assert evaluate(parent, raw, progress=False) == evaluate(parent, data, progress=False)
    modules = hf_modular.decompose(parent, raw, samples_per_class=6, progress=False)
    decoded = hf_modular.decompose(parent, data, samples_per_class=6, progress=False)
    for label, module in modules.items():
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, decoded[label].state_dict()[name]), name
    trained, twin = copy.deepcopy(parent), copy.deepcopy(parent)
    train(trained, raw, epochs=1, batch_size=6, progress=False)
    train(twin, data, epochs=1, batch_size=6, progress=False)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, twin.state_dict()[name]), name
    small = raw.cast_column("image", datasets.Image()).map(lambda row: {"image": row["image"].resize((4, 4))})
    with pytest.raises(ValueError, match="The dataset's images are 4x4 but the model takes 8x8"):
        hf_modular.decompose(parent, small.cast_column("image", datasets.Image(decode=False)), progress=False)


def test_dataloader_workers_give_the_same_answer(parent):
    data = dark_bright_dataset()
    assert evaluate(parent, data, num_workers=2, progress=False) == evaluate(parent, data, progress=False)
    modules = hf_modular.decompose(parent, data, samples_per_class=6, num_workers=2, progress=False)
    alone = hf_modular.decompose(parent, data, samples_per_class=6, progress=False)
    for label, module in modules.items():
        assert module.config.mask_shapes == alone[label].config.mask_shapes
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, alone[label].state_dict()[name]), name
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0, got -1"):
        evaluate(parent, data, num_workers=-1, progress=False)


def test_a_hub_dataset_records_its_configuration_and_the_commit_it_was_read_at(tmp_path, parent, hub_server):
    api = HfApi()
    api.create_repo("user/greys", repo_type="dataset")
    (tmp_path / "plain").mkdir()
    (tmp_path / "noisy").mkdir()
    dark_bright_dataset().to_parquet(str(tmp_path / "plain" / "train.parquet"))
    dark_bright_dataset().select(range(12)).to_parquet(str(tmp_path / "noisy" / "train.parquet"))
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: plain\n  data_files: plain/*.parquet\n"
        "- config_name: noisy\n  data_files: noisy/*.parquet\n---\n"
    )
    commit = api.upload_folder(repo_id="user/greys", repo_type="dataset", folder_path=str(tmp_path)).oid
    modules = hf_modular.decompose(
        parent, "user/greys", dataset_config="plain", dataset_revision="main", samples_per_class=6, progress=False
    )
    record = modules["dark"].config.provenance.dataset
    assert (record.name_or_path, record.config_name, record.revision, record.rows) == (
        "user/greys",
        "plain",
        commit,
        18,
    )
    # What `decompose --push-to` checks its repos with before decomposing: the same data, named the same way.
    planned = planned_modules(parent, "user/greys", dataset_config="plain", dataset_revision="main")["dark"]
    unknown_before = {"fingerprint": None, "rows": None, "image_column": None, "label_column": None}
    assert planned.provenance.dataset == dataclasses.replace(record, **unknown_before)
    with pytest.raises(ConnectionError, match="could not say which commit of the dataset user/elsewhere"):
        planned_modules(parent, "user/elsewhere")  # unknown commit: never compared as "no revision"
    # decompose --push-to checks and builds from one commit, which its modules record.
    parent.save_pretrained(tmp_path / "parent")
    arguments = ["-q", "decompose", str(tmp_path / "parent"), "--dataset", "user/greys", "--dataset-config", "plain"]
    arguments += ["--samples-per-class", "6", "--output", str(tmp_path / "out"), "--push-to", "user"]
    assert main(arguments) == 0
    pushed = hf_modular.load_module("user/parent-dark-module").config.provenance.dataset
    assert (pushed.name_or_path, pushed.config_name, pushed.revision) == ("user/greys", "plain", commit)


def test_no_private_attribute_of_datasets_is_read():
    found = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\._(fingerprint|info|data|indices|format_type)\b", line)
    ]
    assert not found, found


def test_a_pinned_hub_revision_holds_for_the_evaluation_split_too(tmp_path, parent, hub_server, monkeypatch):
    from hf_modular.decompose import decompose_to_directory

    api = HfApi()
    api.create_repo("user/pinned", repo_type="dataset")
    (tmp_path / "data").mkdir()
    dark_bright_dataset().to_parquet(str(tmp_path / "data" / "train.parquet"))
    dark_bright_dataset().select(range(6)).to_parquet(str(tmp_path / "data" / "test.parquet"))
    first = api.upload_folder(repo_id="user/pinned", repo_type="dataset", folder_path=str(tmp_path)).oid
    dark_bright_dataset().to_parquet(str(tmp_path / "data" / "test.parquet"))  # main moves on: 18 test rows
    api.upload_folder(repo_id="user/pinned", repo_type="dataset", folder_path=str(tmp_path))
    report = decompose_to_directory(
        parent, "user/pinned", tmp_path / "out", eval_dataset="user/pinned", dataset_revision=first,
        samples_per_class=6, progress=False,
    )  # fmt: skip
    assert report["evaluation"]["images"] == 6  # the test split as it was at the pinned commit
    # Offline, datasets reads the latest cached commit whatever is asked: another commit than the pinned one is
    # refused, never recorded under the pinned one's name.
    latest = load_image_dataset("user/pinned", split="test")  # main, now the latest copy in the cache
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=rf"user/pinned was read at commit \w{{12}}, not at {first[:12]} as asked"):
        load_image_dataset("user/pinned", split="test", revision=first)
    assert len(load_image_dataset("user/pinned", split="test")) == len(latest)  # unpinned, offline: what is cached
