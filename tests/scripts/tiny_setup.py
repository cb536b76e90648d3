"""The seeded tiny model and generated images that the multi-process scripts share."""

import datasets
import numpy as np
import torch
from PIL import Image

from hf_modular import ModularResNetConfig, ModularResNetForImageClassification


def tiny_model_and_data() -> tuple[ModularResNetForImageClassification, datasets.Dataset]:
    """A 3-class model of 4/8 channels on 8x8 images, and 61 random images: on 2 processes the shards are uneven,
    which is the case that padding would get wrong."""
    torch.manual_seed(0)
    labels = ["a", "b", "c"]
    config = ModularResNetConfig(
        layers=[1, 1], widths=[4, 8], stem_width=4, image_size=8, id2label=dict(enumerate(labels))
    )
    model = ModularResNetForImageClassification(config).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(61)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=labels)})
    data = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(61)]}, features=features)
    return model, data
