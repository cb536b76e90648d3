"""A module on its own: the softmax head says what the parent says about its class, the paper's channeled head stays
available, and each module measures its own one-vs-rest quality next to its parent's."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from sklearn.metrics import roc_auc_score

import hf_modular  # noqa: F401
from hf_modular import ComposedModel, ModularResNetForImageClassification
from hf_modular.decompose import decompose, decompose_to_directory
from hf_modular.decompose.heads import channel_head, softmax_head
from hf_modular.models import image_processor_for
from hf_modular.module import own_vs_rest_quality
from tests.test_decompose import image_dataset, tiny_config

NAMES = ["dark", "bright", "mid"]


def _parent() -> ModularResNetForImageClassification:
    torch.manual_seed(0)
    model = ModularResNetForImageClassification(tiny_config(layers=[2, 2], id2label=dict(enumerate(NAMES))))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.bias.uniform_(-0.1, 0.3)
        model.fc.weight.mul_(40)  # confident enough that one-vs-rest decisions differ between the heads
    return model.eval()


def _data():
    return image_dataset([30, 220, 128] * 8, [0, 1, 2] * 8, noise=40, names=NAMES)


def _pixels(model, data) -> torch.Tensor:
    images = [image.convert("RGB") for image in data["image"]]
    return image_processor_for(model.config)(images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("strategy", ["activation", "channel"])
def test_softmax_head_answers_the_parents_probability_of_its_class(strategy):
    parent, data = _parent(), _data()
    options = {"backtrack": "none"} if strategy == "activation" else {"prune_from": "stem", "keep": 1.0}
    options |= {"distill_steps": 0, "reconstruct": False} if strategy == "channel" else {}
    modules = decompose(
        parent, data, strategy=strategy, samples_per_class=8, negatives_ratio=2.0, progress=False, **options
    )  # every image observed by every module
    pixel_values = _pixels(parent, data)  # the observed images: nodes masked there never fired on them
    with torch.no_grad():
        expected = parent(pixel_values).logits.softmax(dim=1)
        for index, label in enumerate(NAMES):
            module = modules[label]
            assert module.config.head_type == "softmax" and module.config.head_rows == 3
            probability = module(pixel_values).logits.softmax(dim=1)[:, 0]
            torch.testing.assert_close(probability, expected[:, index], atol=1e-5, rtol=1e-4)
            assert torch.equal(probability > 0.5, expected[:, index] > 0.5)  # the parent's own decision


def test_the_papers_channeled_head_stays_available_and_decides_differently():
    parent, data = _parent(), _data()
    kwargs = dict(samples_per_class=8, backtrack="none", progress=False)
    channeled = decompose(parent, data, head="channeled", **kwargs)
    softmax = decompose(parent, data, **kwargs)
    pixel_values = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    differ = False
    with torch.no_grad():
        for index, label in enumerate(NAMES):
            module = channeled[label]
            assert module.config.head_type == "linear" and module.fc.out_features == 2
            weight, bias = channel_head(parent.fc.weight, parent.fc.bias, index)
            assert torch.equal(module.fc.weight, weight) and torch.equal(module.fc.bias, bias)
            assert channeled[label].config.provenance.method.parameters["head"] == "channeled"
            claims = channeled[label](pixel_values).logits.argmax(1) == 0
            differ |= not torch.equal(claims, softmax[label](pixel_values).logits.argmax(1) == 0)
    assert differ, "on these images the mean-of-the-rest head must claim where the parent would not"
    answers = parent(_pixels(parent, data)).logits.argmax(1)
    for modules in (channeled, softmax):  # either head composes to the parent's answer
        composed = ComposedModel.from_modules(list(modules.values()))
        assert composed.predict(data["image"]) == [NAMES[i] for i in answers]


def test_softmax_head_round_trips_through_transformers_and_timm(tmp_path):
    import timm

    parent, data = _parent(), _data()
    module = decompose(parent, data, classes=["mid"], samples_per_class=8, progress=False)["mid"]
    module.save_pretrained(tmp_path / "mid")
    reloaded = ModularResNetForImageClassification.from_pretrained(tmp_path / "mid")
    via_timm = timm.create_model(f"local-dir:{tmp_path / 'mid'}", pretrained=True).eval()
    weight, bias = softmax_head(parent.fc.weight, parent.fc.bias, 2)
    assert torch.equal(reloaded.fc.weight, weight) and torch.equal(reloaded.fc.bias, bias)
    pixel_values = _pixels(parent, data)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, module(pixel_values).logits)
        torch.testing.assert_close(via_timm(pixel_values), module(pixel_values).logits)


def test_mixed_heads_share_execution_and_equal_running_alone():
    parent, data = _parent(), _data()
    kwargs = dict(samples_per_class=8, progress=False)
    members = [
        decompose(parent, data, classes=["dark"], head="channeled", **kwargs)["dark"],
        decompose(parent, data, classes=["bright"], **kwargs)["bright"],
        decompose(parent, data, classes=["mid"], strategy="channel", distill_steps=2, distill_images=8, **kwargs)[
            "mid"
        ],
    ]
    composed = ComposedModel.from_modules(members)
    pixel_values = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            composed.module_logits(pixel_values), composed.module_logits(pixel_values, shared=False), atol=1e-5, rtol=0
        )
    assert composed.execution_plan.shared_steps > 0


def test_own_vs_rest_quality_measures():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(400, generator=generator)
    truth = torch.rand(400, generator=generator) < probabilities
    probabilities[::5] = 0.5  # ties
    quality = own_vs_rest_quality(probabilities, truth)
    claims = probabilities > 0.5
    assert quality["accuracy"] == pytest.approx((claims == truth).float().mean().item())
    assert quality["precision"] == pytest.approx((claims & truth).sum().item() / claims.sum().item())
    assert quality["recall"] == pytest.approx((claims & truth).sum().item() / truth.sum().item())
    assert quality["auc"] == pytest.approx(roc_auc_score(truth.numpy(), probabilities.numpy()))
    # Calibrated by construction (truth drawn with probability p): a small error; always claiming 0.9 is far off.
    assert quality["ece"] < 0.1
    overconfident = own_vs_rest_quality(torch.full((400,), 0.9), truth)
    assert overconfident["ece"] == pytest.approx(abs(0.9 - truth.float().mean().item()))


def test_each_module_reports_its_own_quality_next_to_its_parents(tmp_path):
    parent, data = _parent(), _data()
    report = decompose_to_directory(
        parent,
        data,
        tmp_path / "out",
        eval_dataset=data,
        samples_per_class=8,
        negatives_ratio=2.0,
        backtrack="none",
        progress=False,
    )
    pixel_values = _pixels(parent, data)
    truth = torch.tensor(data["label"])
    with torch.no_grad():
        parent_probabilities = parent(pixel_values).logits.softmax(dim=1)
    for index, label in enumerate(NAMES):
        row = report["modules"][label]["own_vs_rest"]
        expected = own_vs_rest_quality(parent_probabilities[:, index], truth == index)
        assert row["parent"] == pytest.approx(expected)
        assert row["module"] == pytest.approx(expected)  # the softmax head decides as the parent does
        config = json.loads((tmp_path / "out" / f"{label}-module" / "config.json").read_text())
        assert config["module"]["evaluation"]["own_vs_rest"]["module"] == pytest.approx(row["module"])
        card = ModelCard.load(tmp_path / "out" / f"{label}-module" / "README.md")
        # In-memory data has no dataset id for the Hub's model-index: the figures are in the card's text (a Hub
        # dataset's model-index is tested in test_hub).
        assert card.data.eval_results is None
        assert f"{100 * row['module']['accuracy']:.2f}%" in card.content and "calibration error (ECE)" in card.content


def test_distillation_trains_the_softmax_head_as_the_module_answers():
    """Recovery fits the module's answer (own logit against the log-sum-exp of the others) to the parent's
    probability; fitting the first two rows instead would leave the answer worse than before."""
    parent, data = _parent(), _data()
    pixel_values = _pixels(parent, data)
    options = dict(strategy="channel", prune_from="layer1", keep=0.25, reconstruct=False, samples_per_class=8)
    options |= dict(distill_images=24, distill_batch_size=24, learning_rate=1e-2, mirror=False, progress=False)
    with torch.no_grad():
        target = parent(pixel_values).logits.softmax(dim=1)
    gaps = {}
    for steps in (0, 60):
        modules = decompose(parent, data, distill_steps=steps, **options)
        with torch.no_grad():
            gaps[steps] = sum(
                (modules[label](pixel_values).logits.softmax(dim=1)[:, 0] - target[:, index]).abs().mean().item()
                for index, label in enumerate(NAMES)
            )
    assert gaps[60] < 0.75 * gaps[0], gaps  # (fitting the first two rows made it 5x worse than undistilled)
