"""Models of any channel count load and classify through every path: transformers, timm and pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline

import hf_modular  # noqa: F401  (registers the classes)
from hf_modular import ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.models import image_processor_for
from hf_modular.models.processing import GreyscaleConvNextImageProcessor, GreyscaleViTImageProcessor
from tests.conftest import randomize_


def _grey_config(stem_type: str) -> ModularResNetConfig:
    return ModularResNetConfig(
        layers=[1, 1],
        widths=[4, 8],
        stem_width=4,
        stem_type=stem_type,
        image_size=64 if stem_type == "imagenet" else 16,
        num_channels=1,
        image_mean=[0.4],
        image_std=[0.3],
        id2label={0: "zero", 1: "one", 2: "two"},
    )


def _grey_model(stem_type: str) -> ModularResNetForImageClassification:
    torch.manual_seed(0)
    return randomize_(ModularResNetForImageClassification(_grey_config(stem_type))).eval()


@pytest.mark.parametrize(
    ("stem_type", "processor_class"),
    [
        ("cifar", GreyscaleViTImageProcessor),
        ("imagenet", GreyscaleConvNextImageProcessor),
    ],
)
def test_a_one_channel_model_loads_and_classifies_through_every_path(tmp_path, stem_type, processor_class):
    model = _grey_model(stem_type)
    model.save_pretrained(tmp_path / "grey")
    size = model.config.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    grey = Image.fromarray(pixels)

    processor = AutoImageProcessor.from_pretrained(tmp_path / "grey")
    assert type(processor) is processor_class
    pixel_values = processor(grey, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 1, size, size)
    with torch.no_grad():
        expected = model(pixel_values).logits

    via_timm = timm.create_model(f"local-dir:{tmp_path / 'grey'}", pretrained=True).eval()
    assert list(via_timm.pretrained_cfg["mean"]) == [0.4] and via_timm.config.image_std == [0.3]
    with torch.no_grad():
        torch.testing.assert_close(via_timm(pixel_values), expected)

    rgb = np.asarray(grey.convert("RGB"))  # the same image as uint8 and float arrays and tensors, in RGB
    for other in (rgb, torch.from_numpy(rgb).permute(2, 0, 1), rgb.astype(np.float32) / 255):
        options = {"do_rescale": False} if other.dtype == np.float32 else {}
        converted = processor(other, return_tensors="pt", **options)["pixel_values"]
        assert converted.shape == pixel_values.shape
        if stem_type == "cifar":  # no resize: the same pixels up to the rounding of the luminance (1/255)
            torch.testing.assert_close(converted, pixel_values, atol=1.01 / 255 / 0.3, rtol=0)

    classify = pipeline("image-classification", model=str(tmp_path / "grey"))
    answer = classify(grey, top_k=3)  # the pipeline hands over RGB; the processor takes its luminance
    assert answer == classify(grey.convert("RGB"), top_k=3)
    best = expected.softmax(-1)[0].argmax().item()
    assert answer[0]["label"] == model.config.id2label[best]
    assert answer[0]["score"] == pytest.approx(expected.softmax(-1)[0, best].item(), abs=1e-5)


# Every kind of image transformers' processors take, each made from a channels-last uint8 RGB array.
INPUT_KINDS = {
    "PIL image": Image.fromarray,
    "numpy, channels last": lambda rgb: rgb,
    "numpy, channels first": lambda rgb: rgb.transpose(2, 0, 1),
    "torch, channels first": lambda rgb: torch.from_numpy(rgb).permute(2, 0, 1),
    "torch, channels last": torch.from_numpy,
}


@pytest.mark.parametrize("stem_type", ["cifar", "imagenet"])
def test_greyscale_processors_convert_every_input_kind_as_the_pil_path_does(stem_type):
    # As transformers' test_convert_to_rgb_mixed_input_batch, for the luminance step: one batch mixing every kind.
    processor = image_processor_for(_grey_config(stem_type))
    rng = np.random.default_rng(0)
    # Coloured, not grey, so that a channel axis taken for another, or channels weighted wrongly, would show.
    rgbs = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in INPUT_KINDS]
    expected = processor([Image.fromarray(rgb) for rgb in rgbs], return_tensors="pt")["pixel_values"]
    assert expected.shape[:2] == (len(rgbs), 1)

    def process(images, **options):
        return processor(images, return_tensors="pt", **options)["pixel_values"]

    mixed = [kind(rgb) for kind, rgb in zip(INPUT_KINDS.values(), rgbs, strict=True)]
    torch.testing.assert_close(process(mixed), expected, rtol=0, atol=0)  # uint8: PIL's own conversion, exactly
    for name, kind in INPUT_KINDS.items():
        torch.testing.assert_close(process(kind(rgbs[0])), expected[:1], rtol=0, atol=0, msg=name)
    stacked = np.stack(rgbs)  # a batch as one array or tensor, in either layout
    as_tensor = torch.from_numpy(stacked)
    for batch in (stacked, stacked.transpose(0, 3, 1, 2), as_tensor, as_tensor.permute(0, 3, 1, 2)):
        torch.testing.assert_close(process(batch), expected, rtol=0, atol=0)

    # Float images in [0, 1]: the same luminance before PIL rounds it to whole grey levels (a resize can carry
    # that rounding a little further).
    array_kinds = [kind for name, kind in INPUT_KINDS.items() if name != "PIL image"]
    floats = [kind(rgb.astype(np.float32) / 255) for kind, rgb in zip(array_kinds, rgbs, strict=False)]
    grey_level = 1 / 255 / processor.image_std[0]
    torch.testing.assert_close(process(floats, do_rescale=False), expected[:4], rtol=0, atol=2 * grey_level)

    # A layout the shape leaves ambiguous (3 rows of 3-channel pixels look channels-first) follows input_data_format.
    short = rng.integers(0, 256, (3, 24, 3), dtype=np.uint8)
    expected = process(Image.fromarray(short))
    for image in (short, torch.from_numpy(short)):
        torch.testing.assert_close(process(image, input_data_format="channels_last"), expected, rtol=0, atol=0)


def test_greyscale_processors_name_their_keyword_arguments_as_transformers_looks_them_up():
    import sys

    for processor_class in (GreyscaleViTImageProcessor, GreyscaleConvNextImageProcessor):
        module = sys.modules[processor_class.__module__]  # transformers' test_valid_kwargs_set looks there
        assert getattr(module, f"{processor_class.__name__}Kwargs") is processor_class().valid_kwargs


def test_rgb_models_keep_transformers_own_processors(tmp_path):
    config = ModularResNetConfig(layers=[1, 1], widths=[4, 8], stem_width=4)
    ModularResNetForImageClassification(config).save_pretrained(tmp_path / "rgb")
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "rgb")).__name__ == "ViTImageProcessor"
