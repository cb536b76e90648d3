"""Numeric options are checked where they enter, with a message that names the option and its range."""

from __future__ import annotations

import math

import pytest
import torch

import hf_modular
from hf_modular import ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.evaluation import evaluate
from hf_modular.train import train
from hf_modular.validation import check_number
from tests.test_decompose import dark_bright_dataset, tiny_config


@pytest.fixture(scope="module")
def parent():
    torch.manual_seed(0)
    return ModularResNetForImageClassification(tiny_config()).eval()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"samples_per_class": 0}, "samples_per_class must be an integer >= 1, got 0"),
        ({"samples_per_class": -3}, "samples_per_class must be an integer >= 1, got -3"),
        ({"samples_per_class": 2.5}, "samples_per_class must be an integer >= 1, got 2.5"),
        ({"negatives_ratio": -1.0}, "negatives_ratio must be a number >= 0, got -1.0"),
        ({"delta": math.nan}, "delta must be a number >= 0, got nan"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ],
)
def test_decompose_refuses_out_of_range_options(parent, options, message):
    with pytest.raises(ValueError, match=message):
        hf_modular.decompose(parent, dark_bright_dataset(), progress=False, **options)


def test_train_and_evaluate_refuse_out_of_range_options(parent):
    data = dark_bright_dataset()
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        train(parent, data, epochs=0, progress=False)
    with pytest.raises(ValueError, match="learning_rate must be a number > 0, got -0.1"):
        train(parent, data, epochs=1, learning_rate=-0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        evaluate(parent, data, batch_size=0, progress=False)


def test_booleans_and_infinities_are_not_numbers_here():
    with pytest.raises(ValueError, match="got True"):
        check_number("samples_per_class", True, minimum=1, integer=True)
    with pytest.raises(ValueError, match="got inf"):
        check_number("negatives_ratio", math.inf, minimum=0)
    check_number("negatives_ratio", 0, minimum=0)  # an int is a number


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["evaluate", "m", "--dataset", "d", "--limit", "0"], "--limit: must be an integer >= 1, got 0"),
        (["train", "--dataset", "d", "--output", "o", "--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
        (["decompose", "m", "--dataset", "d", "--output", "o", "--samples-per-class", "-1"], "--samples-per-class"),
        (["decompose", "m", "--dataset", "d", "--output", "o", "--negatives-ratio", "nan"], "--negatives-ratio"),
        (["evaluate", "m", "--dataset", "d", "--batch-size", "ten"], "expected an integer, got 'ten'"),
    ],
)
def test_the_cli_refuses_them_before_any_work(capsys, arguments, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_unlabelled_rows_are_skipped_never_taken_as_the_last_class(parent):
    """datasets marks an unlabelled row with -1; indexing a label map with -1 would pick the last class."""
    data = dark_bright_dataset()  # 6 dark, 6 bright, 6 mid ("mid" is the last class)
    unlabelled = data.map(lambda row, index: {"label": -1 if index < 6 else row["label"]}, with_indices=True)
    modules = hf_modular.decompose(parent, unlabelled, samples_per_class=6, classes=["mid"], progress=False)
    assert modules["mid"].config.provenance.samples.own == 6  # not 12: the dark rows are not "mid"
    assert evaluate(parent, unlabelled, progress=False).count == 12
    history = train(parent, unlabelled, epochs=1, batch_size=4, progress=False)
    assert history.final["loss"] > 0


def test_a_label_outside_the_class_list_names_its_row(parent):
    import datasets

    data = dark_bright_dataset()
    raw = data.cast_column("label", datasets.Value("int64")).map(
        lambda row, i: {"label": 15 if i == 4 else row["label"]}, with_indices=True
    )
    broken = raw.cast_column("label", datasets.ClassLabel(names=["dark", "bright", "mid"]))
    with pytest.raises(ValueError, match="Row 4 of the dataset has label 15"):
        hf_modular.decompose(parent, broken, progress=False)


def test_duplicate_class_names_are_refused(tmp_path, akamaster_checkpoint, capsys):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from hf_modular import ModularResNetConfig

    with pytest.raises(StrictDataclassClassValidationError, match=r"gives the names \['cat'\] to more than one"):
        ModularResNetConfig(id2label={0: "cat", 1: "dog", 2: "cat"})
    path, _ = akamaster_checkpoint(blocks_per_stage=1, num_classes=3)
    code = main(["import", str(path), "--labels", "cat,cat,dog", "--output", str(tmp_path / "out")])
    assert code == 1 and "to more than one class" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_name_template_with_unknown_fields_is_refused_before_any_push(tmp_path):
    from hf_modular.hub import push_modules

    with pytest.raises(ValueError, match=r"uses \['model'\]; it may use \{parent_name\}, \{label\}"):
        push_modules(tmp_path / "nothing-here", "me", name_template="{model}-{label}")


def test_output_problems_are_found_before_the_statistics_pass(tmp_path, parent):
    from hf_modular.decompose import decompose_to_directory

    (tmp_path / "a-file").write_text("not a directory")
    data = dark_bright_dataset()
    with pytest.raises(OSError, match="Cannot write into the output directory"):
        decompose_to_directory(parent, data, tmp_path / "a-file" / "out", samples_per_class=6, progress=False)
    long_name = "x" * 300
    renamed = ModularResNetForImageClassification(tiny_config(id2label={0: "dark", 1: "bright", 2: long_name}))
    with pytest.raises(ValueError, match="byte directory name"):
        decompose_to_directory(renamed, "no-such-dataset-is-read", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything was written or read


def test_a_composition_cannot_point_its_members_outside_itself(tmp_path):
    """A crafted composed config must not make from_pretrained read weights from elsewhere on this machine."""
    import json

    from hf_modular import ComposedModel

    torch.manual_seed(0)
    parent = ModularResNetForImageClassification(tiny_config()).eval()
    modules = hf_modular.decompose(parent, dark_bright_dataset(), samples_per_class=6, progress=False)
    ComposedModel.from_modules([modules["dark"], modules["bright"]]).save_pretrained(tmp_path / "composed")
    modules["mid"].save_pretrained(tmp_path / "elsewhere" / "private-mid")  # outside the composition
    config_path = tmp_path / "composed" / "config.json"
    original = json.loads(config_path.read_text())
    (tmp_path / "composed" / "modules" / "link").symlink_to(tmp_path / "elsewhere" / "private-mid")
    for subfolder, message in [
        ("../elsewhere/private-mid", "points outside the composition"),
        (str(tmp_path / "elsewhere" / "private-mid"), "points outside the composition"),
        ("modules/link", "through a symbolic link"),
    ]:
        crafted = json.loads(json.dumps(original))
        crafted["members"][0] = {"label": "dark", "subfolder": subfolder}
        config_path.write_text(json.dumps(crafted))
        with pytest.raises(ValueError, match=message):
            ComposedModel.from_pretrained(tmp_path / "composed")
    config_path.write_text(json.dumps(original))
    assert ComposedModel.from_pretrained(tmp_path / "composed").labels == ["dark", "bright"]


def test_a_downloaded_composition_may_not_name_local_paths(tmp_path):
    from hf_modular.compose.members import confined_source

    assert confined_source("user/dark-module", "user/composition") == "user/dark-module"
    assert confined_source(str(tmp_path), str(tmp_path)) == str(tmp_path)  # a local composition may
    with pytest.raises(ValueError, match="may only name Hub repos"):
        confined_source(str(tmp_path), "user/composition")
