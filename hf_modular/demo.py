"""The demo: the whole idea on a dataset that ships with scikit-learn, offline, in minutes on a CPU.

1. Train a small ModularResNet on scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes). The
   network is adapted to the data honestly: one input channel, 8x8 input, a 3x3 stem and three narrow stages.
2. Decompose it into 10 modules (the same Accelerate path as any decomposition) and save them as Hub-ready
   directories with their cards.
3. Compose the modules back and compare with the parent on the held-out split.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from .configuration_modular_resnet import ModularResNetConfig
from .decompose.output import decompose_to_directory
from .modeling_modular_resnet import ModularResNetForImageClassification
from .train import train

DIGIT_NAMES = [str(digit) for digit in range(10)]


def digits_dataset(seed: int = 0, test_size: float = 0.2) -> datasets.DatasetDict:
    """scikit-learn's digits as a `datasets.DatasetDict` ("train", "test"), stratified, images as 8x8 "L" PIL."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((image * (255 / 16)).round().astype(np.uint8), mode="L") for image in digits.images]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    return full.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def digits_parent_config() -> ModularResNetConfig:
    """A ResNet for 8x8 grey digits: 3x3 stem, three stages of 16/32/64 channels (8 -> 4 -> 2 pixels)."""
    return ModularResNetConfig(
        layers=[1, 1, 1],
        widths=[16, 32, 64],
        stem_width=16,
        num_channels=1,
        image_size=8,
        image_mean=[0.5],
        image_std=[0.5],
        id2label=dict(enumerate(DIGIT_NAMES)),
    )


def run_demo(output: str | os.PathLike, *, seed: int = 0, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, decompose and compose on the digits; returns a summary (also written to `output/summary.json`)."""
    import json

    output = Path(output)
    splits = digits_dataset(seed)
    parent = ModularResNetForImageClassification(digits_parent_config())
    started = time.perf_counter()
    history = train(
        parent,
        splits["train"],
        eval_dataset=splits["test"],
        epochs=4 if quick else 15,
        batch_size=64,
        learning_rate=0.05,
        horizontal_flip=False,  # a mirrored digit is another digit, or none
        seed=seed,
        progress=progress,
    )
    training_seconds = time.perf_counter() - started
    parent.save_pretrained(output / "parent")
    parent = ModularResNetForImageClassification.from_pretrained(output / "parent")  # provenance names the directory
    report = decompose_to_directory(
        parent,
        splits["train"],
        output / "modules",
        eval_dataset=splits["test"],
        samples_per_class=40 if quick else 100,
        seed=seed,
        progress=progress,
    )
    summary = {
        "dataset": "scikit-learn digits (8x8 grey, 10 classes)",
        "train_images": len(splits["train"]),
        "test_images": len(splits["test"]),
        "training": {"epochs": len(history.epochs), "seconds": training_seconds, "final": history.final},
        "parent": report["evaluation"]["parent"],
        "composed": report["evaluation"]["composed"],
        "modules": {
            label: {key: row[key] for key in ("masked_fraction", "jaccard_index", "binary_accuracy")}
            for label, row in report["modules"].items()
        },
        "decomposition_seconds": report["timings"].get("decompose_seconds"),
        "output": str(output),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
