"""save_pretrained / from_pretrained: the files written, the stock image processor, loading through transformers,
timm and pipeline, refusal of bad checkpoints, and atomic saves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    BaseImageProcessor,
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    pipeline,
)

from hf_modular import ComposedModel, ModularResNetConfig, ModularResNetForImageClassification, ModularResNetModel
from hf_modular.cli import main
from hf_modular.decompose import decompose
from hf_modular.models.timm_models import TimmModularResNet

SAVED_FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _leftovers(parent: Path) -> list[str]:
    return [path.name for path in parent.iterdir() if path.name.endswith(".partial")]


@pytest.fixture
def model(tiny_config, randomize) -> ModularResNetForImageClassification:
    return randomize(ModularResNetForImageClassification(tiny_config), seed=5).eval()


@pytest.fixture
def saved(tmp_path, model) -> Path:
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    return directory


def test_save_writes_exactly_three_files(saved):
    assert sorted(p.name for p in saved.iterdir()) == SAVED_FILES
    assert _leftovers(saved.parent) == []
    assert json.loads((saved / "config.json").read_text())["model_type"] == "modular_resnet"


def test_processor_is_a_stock_transformers_class_with_the_model_settings(saved, model):
    processor = AutoImageProcessor.from_pretrained(saved)
    assert isinstance(processor, BaseImageProcessor)
    assert type(processor).__module__.startswith("transformers.")
    assert list(processor.image_mean) == model.config.image_mean
    assert list(processor.image_std) == model.config.image_std
    assert (processor.size["height"], processor.size["width"]) == (32, 32)
    saved_json = json.loads((saved / "preprocessor_config.json").read_text())
    assert saved_json["image_processor_type"] == type(processor).__name__


def test_processor_normalises_a_uint8_image(saved, model):
    pixels = np.random.RandomState(0).randint(0, 256, size=(32, 32, 3), dtype=np.uint8)
    processor = AutoImageProcessor.from_pretrained(saved)
    actual = processor(Image.fromarray(pixels), return_tensors="pt")["pixel_values"]
    mean = torch.tensor(model.config.image_mean)[:, None, None]
    std = torch.tensor(model.config.image_std)[:, None, None]
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    assert actual.shape == (1, 3, 32, 32)
    torch.testing.assert_close(actual[0], expected, atol=1e-5, rtol=1e-5)


def test_imagenet_stem_processor_resizes_and_center_crops(tmp_path):
    config = ModularResNetConfig(
        stem_type="imagenet", shortcut="B", layers=[1], widths=[4], stem_width=4, image_size=64
    )
    ModularResNetForImageClassification(config).save_pretrained(tmp_path / "m")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "m")
    assert type(processor).__module__.startswith("transformers.")
    image = Image.fromarray(np.random.RandomState(1).randint(0, 256, size=(90, 120, 3), dtype=np.uint8))
    assert processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 64, 64)


def test_one_directory_loads_with_identical_logits_everywhere(saved, model):
    x = _images()
    with torch.no_grad():
        expected = model(x).logits
        ours = ModularResNetForImageClassification.from_pretrained(saved)
        auto = AutoModelForImageClassification.from_pretrained(saved)
        through_timm = timm.create_model(f"local-dir:{saved}", pretrained=True).eval()
        assert type(auto) is ModularResNetForImageClassification
        assert isinstance(through_timm, TimmModularResNet)
        assert through_timm.pretrained_cfg["label_names"] == ["cat", "dog", "bird"]
        assert through_timm.num_classes == 3
        assert torch.equal(ours(x).logits, expected)
        assert torch.equal(auto(x).logits, expected)
        assert torch.equal(through_timm(x), expected)


def test_pipeline_returns_label_names(saved, model):
    image = Image.fromarray(np.random.RandomState(2).randint(0, 256, size=(32, 32, 3), dtype=np.uint8))
    classifier = pipeline("image-classification", model=str(saved))
    predictions = classifier(image, top_k=3)
    assert {p["label"] for p in predictions} == {"cat", "dog", "bird"}

    pixel_values = AutoImageProcessor.from_pretrained(saved)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = model(pixel_values).logits.softmax(-1)[0]
    expected = sorted(
        ((model.config.id2label[i], float(p)) for i, p in enumerate(probabilities)), key=lambda pair: -pair[1]
    )
    assert [p["label"] for p in predictions] == [label for label, _ in expected]
    for prediction, (_, score) in zip(predictions, expected, strict=True):
        assert prediction["score"] == pytest.approx(score, abs=1e-5)


def test_trunk_only_checkpoint_gets_a_fresh_head(tmp_path, tiny_config, randomize):
    trunk = randomize(ModularResNetModel(tiny_config), seed=6)
    trunk.save_pretrained(tmp_path / "trunk")
    classifier = ModularResNetForImageClassification.from_pretrained(tmp_path / "trunk")
    loaded = classifier.state_dict()
    for key, value in trunk.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert classifier.fc.out_features == 3


def test_pickle_only_directory_needs_an_explicit_opt_in(tmp_path, saved, model, capsys):
    directory = tmp_path / "pickle"
    directory.mkdir()
    shutil.copy(saved / "config.json", directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    with pytest.raises(OSError, match="use_safetensors=False") as info:
        ModularResNetForImageClassification.from_pretrained(directory)
    assert "pytorch_model.bin" in str(info.value)

    loaded = ModularResNetForImageClassification.from_pretrained(directory, use_safetensors=False)
    x = _images()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)

    # On the command line the refusal names the flag, and the flag loads the file.
    assert main(["info", str(directory)]) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["info", str(directory), "--allow-pickle", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == sum(p.numel() for p in model.parameters())
    assert main(["info", str(saved), "--allow-pickle"]) == 0  # safetensors still load (and are preferred) with it


def test_loading_says_what_a_path_is_when_it_is_no_saved_model(tmp_path, saved, capsys):
    (tmp_path / "weights.th").write_bytes(b"not a model directory")
    (tmp_path / "notes").mkdir()
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "decomposition.json").write_text("{}")
    shutil.copytree(saved, tmp_path / "cut-short")
    (tmp_path / "cut-short" / "config.json").write_text('{"model_type": "modular_res')
    ResNetForImageClassification(ResNetConfig(num_labels=2, hidden_sizes=[8, 8, 8, 8])).save_pretrained(
        tmp_path / "transformers-resnet"
    )
    for argument, expected in [
        (tmp_path / "weights.th", "is a file; give a saved model's directory or a Hub repo id (a CIFAR ResNet"),
        (saved / "config.json", "is a file; give a saved model's directory or a Hub repo id."),
        (tmp_path / "notes", "has no config.json, so it holds no saved model"),
        (tmp_path / "modules", "is a decomposition's output: it holds one module per class"),
        (tmp_path / "cut-short", "config.json is not valid JSON (Unterminated string"),
    ]:
        # transformers would call the file invalid JSON, or load the directory with a default config
        with pytest.raises((ValueError, OSError), match=re.escape(expected)):
            ModularResNetForImageClassification.from_pretrained(argument)
        with pytest.raises((ValueError, OSError), match=re.escape(expected)):
            ComposedModel.from_pretrained(argument)
        if argument != tmp_path / "modules":  # info describes a decomposition's output from its report instead
            assert main(["info", str(argument)]) == 1
            assert expected in capsys.readouterr().err
        assert main(["card", str(argument)]) == 1
        assert expected in capsys.readouterr().err
    # A path that can be no repo id and is not there is said to be missing, not looked up on the Hub.
    for missing in (f"{tmp_path}/gone", "./gone-module", "modules/gone/cat-module"):
        for loader in (ModularResNetForImageClassification, ComposedModel):
            with pytest.raises(FileNotFoundError, match=f"No such directory: {re.escape(missing)}. Give a saved"):
                loader.from_pretrained(missing)
        assert main(["info", missing]) == 1
        assert f"No such directory: {missing}." in capsys.readouterr().err
    # A saved model of another kind names the loader that takes it (transformers would only warn).
    with pytest.raises(ValueError, match="is a classifier or class module: load it with ModularResNetForImage"):
        ComposedModel.from_pretrained(saved)
    with pytest.raises(ValueError, match="is a transformers ResNet: convert it with ModularResNetForImageClass"):
        ModularResNetForImageClassification.from_pretrained(tmp_path / "transformers-resnet")
    # A model of another architecture is not read as a ModularResNet with random weights, nor shown by `info`.
    vit = ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_labels=2)
    ViTForImageClassification(vit).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="is a 'vit' model, which hf_modular does not load"):
        ModularResNetForImageClassification.from_pretrained(tmp_path / "vit")
    assert main(["info", str(tmp_path / "vit")]) == 1
    assert "is a 'vit' model, which hf_modular does not load" in capsys.readouterr().err
    with pytest.raises(TypeError, match="is a 'vit' model"):
        ModularResNetForImageClassification.from_transformers(tmp_path / "vit")
    # A weights file with its config given loads, as transformers loads one.
    config = ModularResNetConfig.from_pretrained(saved)
    loaded = ModularResNetForImageClassification.from_pretrained(saved / "model.safetensors", config=config)
    assert torch.equal(loaded.fc.weight, ModularResNetForImageClassification.from_pretrained(saved).fc.weight)


def test_directory_without_weights_raises(tmp_path, saved):
    directory = tmp_path / "empty"
    directory.mkdir()
    shutil.copy(saved / "config.json", directory)
    with pytest.raises(OSError, match="no model.safetensors"):
        ModularResNetForImageClassification.from_pretrained(directory)
    with pytest.raises(OSError):
        ModularResNetForImageClassification.from_pretrained(directory, use_safetensors=False)


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_config_widths_that_do_not_match_the_tensors_follow_transformers(tmp_path, saved):
    directory = shutil.copytree(saved, tmp_path / "wider")
    _edit_config(directory, widths=[4, 16])
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # transformers' own error and advice
        ModularResNetForImageClassification.from_pretrained(directory)
    model, info = ModularResNetForImageClassification.from_pretrained(
        directory, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert model.layer2[0].conv1.out_channels == 16
    assert "layer2.0.conv1.weight" in {entry[0] for entry in info["mismatched_keys"]}


def test_num_labels_mismatch_raises_as_transformers_does_and_can_be_ignored(tmp_path, saved):
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # as for transformers' own ResNet
        ModularResNetForImageClassification.from_pretrained(saved, num_labels=5)
    model = ModularResNetForImageClassification.from_pretrained(saved, num_labels=5, ignore_mismatched_sizes=True)
    assert model.fc.out_features == 5


def test_extra_and_missing_tensors_are_reported_as_transformers_does(tmp_path, tiny_config, saved):
    deeper = ModularResNetConfig(**{**tiny_config.to_dict(), "layers": [2, 2]})
    ModularResNetForImageClassification(deeper).save_pretrained(tmp_path / "deep")
    _edit_config(tmp_path / "deep", layers=[1, 1])  # the checkpoint still holds layer1.1.* and layer2.1.*
    _, info = ModularResNetForImageClassification.from_pretrained(tmp_path / "deep", output_loading_info=True)
    assert "layer1.1.bn1.bias" in info["unexpected_keys"] and not info["missing_keys"]

    directory = shutil.copytree(saved, tmp_path / "partial")
    tensors = load_file(directory / "model.safetensors")
    del tensors["layer2.0.conv1.weight"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    model, info = ModularResNetForImageClassification.from_pretrained(directory, output_loading_info=True)
    assert set(info["missing_keys"]) == {"layer2.0.conv1.weight"}
    assert model.layer2[0].conv1.weight.abs().sum() > 0  # initialised, not left empty


def test_a_module_without_its_masks_is_refused(tmp_path):
    from tests.test_decompose import dark_bright_dataset, tiny_config

    torch.manual_seed(0)
    parent = ModularResNetForImageClassification(tiny_config()).eval()
    module = decompose(parent, dark_bright_dataset(), samples_per_class=6, progress=False)["dark"]
    module.save_pretrained(tmp_path / "dark")
    tensors = load_file(tmp_path / "dark" / "model.safetensors")
    masks = sorted(key for key in tensors if key.endswith(".mask"))
    assert masks
    del tensors[masks[0]]
    save_file(tensors, tmp_path / "dark" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"class module without its {masks[0]}"):
        ModularResNetForImageClassification.from_pretrained(tmp_path / "dark")


def test_from_pretrained_with_no_name_takes_config_and_state_dict(tiny_config, randomize):
    original = randomize(ModularResNetForImageClassification(tiny_config))
    loaded = ModularResNetForImageClassification.from_pretrained(
        None, config=tiny_config, state_dict=original.state_dict()
    )
    for key, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def _shared_tensor_state_dict(model: ModularResNetForImageClassification) -> dict[str, torch.Tensor]:
    state_dict = dict(model.state_dict())
    state_dict["fc.bias"] = state_dict["fc.weight"].view(-1)[: model.config.num_labels]  # aliasing: unsavable
    return state_dict


# Arguments that make transformers' own save_pretrained fail after it has written config.json.
FAILURES = {
    "bad max_shard_size": lambda model: {"max_shard_size": "banana"},
    "state dict with shared tensors": lambda model: {"state_dict": _shared_tensor_state_dict(model)},
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failed_save_to_a_new_directory_leaves_nothing(tmp_path, model, failure):
    kwargs = FAILURES[failure](model)
    # Control: transformers alone fails midway, leaving a half-written directory behind.
    control = tmp_path / "control"
    control.mkdir()
    with pytest.raises((ValueError, RuntimeError)):
        PreTrainedModel.save_pretrained(model, control, **kwargs)
    assert [p.name for p in control.iterdir()] == ["config.json"]

    target = tmp_path / "out" / "model"
    with pytest.raises((ValueError, RuntimeError)):
        model.save_pretrained(target, **kwargs)
    assert not target.exists()
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failed_save_into_an_existing_directory_keeps_it(saved, randomize, model, failure):
    (saved / "README.md").write_text("model card")
    before = _snapshot(saved)
    randomize(model, seed=11)  # the failed save would have written different tensors
    with pytest.raises((ValueError, RuntimeError)):
        model.save_pretrained(saved, **FAILURES[failure](model))
    assert _snapshot(saved) == before
    assert _leftovers(saved.parent) == []


def test_successful_save_into_an_existing_directory_replaces_weights_and_keeps_other_files(saved, randomize, model):
    (saved / "README.md").write_text("model card")
    before = _snapshot(saved)
    randomize(model, seed=12)
    model.save_pretrained(saved)
    after = _snapshot(saved)
    assert sorted(after) == sorted([*SAVED_FILES, "README.md"])
    assert after["README.md"] == b"model card"
    assert after["model.safetensors"] != before["model.safetensors"]
    assert _leftovers(saved.parent) == []
    reloaded = ModularResNetForImageClassification.from_pretrained(saved)
    x = _images()
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)


def test_save_refuses_a_file_path(tmp_path, model):
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    with pytest.raises(FileExistsError):
        model.save_pretrained(path)
    assert path.read_text() == "not a directory"
