"""Decomposition: masks worked out by hand, heads, backtracking, voting, round trips, processes, bad input, resume."""

from __future__ import annotations

import json
import logging

import datasets
import numpy as np
import pytest
import timm
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from safetensors.torch import load_file

import hf_modular  # noqa: F401
from hf_modular import ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.compose import top_k, vote
from hf_modular.decompose import decompose
from hf_modular.decompose.heads import channel_head
from hf_modular.decompose.output import decompose_to_directory
from hf_modular.decompose.strategies.activation import backtrack_features, backtrack_to_input
from hf_modular.evaluation import evaluate
from hf_modular.models import image_processor_for

LABELS = ["dark", "bright", "mid"]


def tiny_config(**overrides) -> ModularResNetConfig:
    fields = dict(layers=[1, 1], widths=[4, 8], stem_width=4, image_size=8, id2label=dict(enumerate(LABELS)))
    return ModularResNetConfig(**{**fields, **overrides})


def image_dataset(
    values: list[int], labels: list[int], size: int = 8, noise: int = 0, seed: int = 0, names: list[str] = LABELS
):
    """One flat grey image per row (value +- noise), with a ClassLabel column."""
    rng = np.random.default_rng(seed)
    images = []
    for value in values:
        pixels = np.clip(value + rng.integers(-noise, noise + 1, (size, size, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture
def brightness_model() -> ModularResNetForImageClassification:
    """A model whose stem site is hand-set: channel 0 is > 0 exactly on bright images, channel 1 is always < 0,
    channel 2 always > 0, channel 3 follows channel 0's sign flipped."""
    torch.manual_seed(0)
    model = ModularResNetForImageClassification(tiny_config()).eval()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[0, :, 1, 1] = 1.0  # centre tap: the normalised pixel itself, > 0 iff the pixel is bright
        model.conv1.weight[3, :, 1, 1] = -1.0
        model.bn1.weight.fill_(1.0)
        model.bn1.bias.copy_(torch.tensor([0.0, -1.0, 1.0, 0.0]))
        model.bn1.running_mean.zero_()
        model.bn1.running_var.fill_(1.0)
    return model


def dark_bright_dataset():
    # Normalised with ImageNet mean/std, 0 is below every channel's mean and 255 above it.
    return image_dataset([0] * 6 + [255] * 6 + [128] * 6, [0] * 6 + [1] * 6 + [2] * 6)


def stem_keep(module: ModularResNetForImageClassification) -> torch.Tensor:
    mask = module.act1.mask
    return torch.ones(4, 8, 8, dtype=torch.bool) if mask is None else mask


def test_concern_identification_masks_nodes_inactive_for_every_own_input(brightness_model):
    modules = decompose(
        brightness_model, dark_bright_dataset(), samples_per_class=6, negatives_ratio=0.0, progress=False
    )
    dark, bright = stem_keep(modules["dark"]), stem_keep(modules["bright"])
    assert not dark[1].any() and not bright[1].any()  # negative for every input: masked in every module
    assert dark[2].all() and bright[2].all()  # positive for every input: kept
    assert not dark[0].any() and bright[0].all()  # own-class only (no negatives): dark images never light it
    assert dark[3].all() and not bright[3].any()


def test_tangling_identification_keeps_nodes_used_by_negatives(brightness_model):
    modules = decompose(brightness_model, dark_bright_dataset(), samples_per_class=6, progress=False)
    dark, bright = stem_keep(modules["dark"]), stem_keep(modules["bright"])
    # Dark's negatives include bright images, which light channel 0: it must stay.
    assert dark[0].all() and bright[3].all()
    assert not dark[1].any() and not bright[1].any()
    info = modules["dark"].config.module
    assert info["samples"] == {"own": 6, "negative": 6}


def test_masking_nodes_that_were_never_active_leaves_observed_outputs_unchanged():
    torch.manual_seed(1)
    parent = ModularResNetForImageClassification(tiny_config()).eval()
    data = image_dataset([40, 90, 200, 30, 180, 120] * 4, [0, 1, 2] * 8, noise=40)
    modules = decompose(
        parent, data, samples_per_class=8, negatives_ratio=0.0, backtrack="none", head="channeled", progress=False
    )
    pixel_values = image_processor_for(parent.config)([row["image"] for row in data], return_tensors="pt")[
        "pixel_values"
    ]
    labels = torch.tensor(data["label"])
    with torch.no_grad():
        features = parent(pixel_values, output_hidden_states=True).hidden_states[-1].mean((2, 3))
        for index, label in enumerate(LABELS):
            module = modules[label]
            assert module.config.mask_shapes, "expected some masked nodes on random weights"
            weight, bias = channel_head(parent.fc.weight, parent.fc.bias, index)
            own = labels == index  # the module observed exactly its own class's rows here
            expected = features[own] @ weight.T + bias
            torch.testing.assert_close(module(pixel_values[own]).logits, expected, rtol=1e-5, atol=1e-5)


def test_conv_sites_mask_raw_conv_outputs_and_keep_residual_adds_consistent():
    torch.manual_seed(3)
    parent = ModularResNetForImageClassification(tiny_config(shortcut="B")).eval()
    data = image_dataset([40, 90, 200, 30, 180, 120] * 4, [0, 1, 2] * 8, noise=40)
    modules = decompose(parent, data, samples_per_class=8, negatives_ratio=0.0, sites="conv", progress=False)
    pixel_values = image_processor_for(parent.config)([row["image"] for row in data], return_tensors="pt")[
        "pixel_values"
    ]
    outputs = {}
    hooks = [
        conv.register_forward_hook(lambda m, i, out, name=name: outputs.__setitem__(name, out.detach()))
        for name, conv in parent.sites("conv").items()
    ]
    with torch.no_grad():
        parent(pixel_values)
    for hook in hooks:
        hook.remove()
    labels = torch.tensor(data["label"])
    for index, label in enumerate(LABELS):
        module = modules[label]
        assert module.config.provenance.method.parameters["sites"] == "conv"
        for name, conv in module.sites("conv").items():
            expected_keep = (outputs[name][labels == index] > 0).any(0)
            kept = conv.mask if conv.mask is not None else torch.ones_like(expected_keep)
            assert torch.equal(kept, expected_keep), name
        # The add's output loses every node that either of its inputs' convs lost.
        last = module.layer2[0]
        expected = last.conv2.mask & last.downsample[0].mask
        assert torch.equal(last.act2.mask, expected)
        identity = module.layer1[0]  # same shape in and out: no projection
        assert identity.downsample is None
        assert torch.equal(identity.act2.mask, identity.conv2.mask)
    with pytest.raises(ValueError, match="sites='relu'"):
        decompose(parent, data, sites="conv", backtrack_input=True, progress=False)


def test_continuous_learning_keeps_nodes_that_other_datasets_classes_use(brightness_model):
    # Module "dark" from the first parent saw only dark images: channel 0 of the stem is masked.
    dark = decompose(
        brightness_model,
        dark_bright_dataset(),
        classes=["dark"],
        samples_per_class=6,
        negatives_ratio=0.0,
        progress=False,
    )["dark"]
    assert not stem_keep(dark)[0].any()
    # A second parent, on another dataset whose class "sun" is bright images.
    other_names = ["sun", "night"]
    other_data = image_dataset([250] * 5 + [10] * 5, [0] * 5 + [1] * 5, names=other_names)
    torch.manual_seed(4)
    other_parent = ModularResNetForImageClassification(tiny_config(id2label=dict(enumerate(other_names)))).eval()
    sun = decompose(other_parent, other_data, classes=["sun"], samples_per_class=5, progress=False)["sun"]

    adapted_dark, adapted_sun = hf_modular.continuous_learning(
        [dark, sun], [dark_bright_dataset(), other_data], progress=False
    )
    assert stem_keep(adapted_dark)[0].all(), "bright 'sun' negatives light channel 0: it must leave dark's map"
    for name, site in dark.sites().items():  # only removes nodes from maps
        if site.mask is not None:
            after = adapted_dark.get_submodule(name).mask
            assert after is None or bool((after | ~site.mask).all()), name
    info = adapted_dark.config.provenance
    assert info.continuous_learning["negatives"] == {"sun": 5}  # 6 wanted (1:1), capped by the 5 "sun" images
    assert info.details["masked_fraction"] < info.continuous_learning["masked_fraction_before"]
    assert not stem_keep(dark)[0].any(), "the input module is unchanged"
    assert adapted_sun.config.provenance.continuous_learning["negatives"] == {"dark": 5}
    with pytest.raises(ValueError, match="no class 'sun'"):
        hf_modular.continuous_learning([dark, sun], [dark_bright_dataset(), dark_bright_dataset()], progress=False)
    with pytest.raises(ValueError, match="at least two modules"):
        hf_modular.continuous_learning([dark], dark_bright_dataset(), progress=False)


def test_sample_plan_spreads_negatives_evenly_and_groups_rows():
    from hf_modular.decompose.sampling import plan_samples

    labels = torch.tensor([0] * 10 + [1] * 4 + [2] * 10 + [3] * 10)
    plan = plan_samples(labels, [0, 2], 4, samples_per_class=7, negatives_ratio=1.0, seed=0)
    assert plan.own.sum(0).tolist() == [7, 7]
    assert plan.negative.sum(0).tolist() == [7, 7]
    row_labels = labels[plan.rows]
    for m, c in enumerate(plan.classes):
        assert (row_labels[plan.own[:, m]] == c).all()
        per_class = torch.bincount(row_labels[plan.negative[:, m]], minlength=4).tolist()
        assert per_class[c] == 0 and sorted(per_class[k] for k in range(4) if k != c) == [2, 2, 3]
    assert not (plan.own & plan.negative).any()
    assert len(set(plan.rows.tolist())) == len(plan.rows)  # one forward per row, shared by the modules using it
    # Groups are contiguous runs of rows that every module uses whole or not at all.
    assert (plan.group.diff() >= 0).all() and (plan.group.diff() <= 1).all()
    assert torch.equal(plan.group_own[plan.group], plan.own)
    assert torch.equal(plan.group_negative[plan.group], plan.negative)
    few = plan_samples(labels, [1], 4, samples_per_class=7, negatives_ratio=1.0, seed=0)
    assert few.own.sum().item() == 4  # class 1 has only 4 rows
    # A class without rows (data of some of the model's classes) gives no negatives: the others give them all.
    absent = plan_samples(labels[labels != 3], [0, 2], 4, samples_per_class=7, negatives_ratio=1.0, seed=0)
    assert absent.negative.sum(0).tolist() == [7, 7]


def test_a_dataset_of_some_of_the_models_classes_decomposes_them(brightness_model, caplog):
    two = image_dataset([0] * 6 + [255] * 6, [0] * 6 + [1] * 6, names=["dark", "bright"])  # no "mid"
    logging.getLogger("hf_modular").addHandler(caplog.handler)
    try:
        refused = r"has no images of 'mid', so no module.*\(classes=\[\.\.\.\]; --classes a,b\)"
        with pytest.raises(ValueError, match=refused):
            decompose(brightness_model, two, samples_per_class=6, progress=False)  # every class, asked for
        assert "told apart" not in caplog.text  # no warning before the refusal
        modules = decompose(brightness_model, two, classes=["dark", "bright"], samples_per_class=6, progress=False)
    finally:
        logging.getLogger("hf_modular").removeHandler(caplog.handler)
    assert "The dataset has no images of 'mid': the modules are told apart only from the classes it" in caplog.text
    for label, module in modules.items():
        samples = module.config.provenance.samples
        assert (samples.own, samples.negative) == (6, 6), label  # every negative from the one other class there


def test_channel_head_keeps_own_row_and_averages_the_rest():
    weight = torch.tensor([[1.0, 2.0], [3.0, -4.0], [5.0, 0.0]])
    bias = torch.tensor([0.5, 1.0, -2.0])
    head_weight, head_bias = channel_head(weight, bias, 1)
    assert torch.equal(head_weight, torch.tensor([[3.0, -4.0], [3.0, 1.0]]))
    assert torch.equal(head_bias, torch.tensor([1.0, -0.75]))


def test_backtracking_readings():
    head = torch.tensor([[-0.6, 0.7, 0.1, -0.5], [0.6, -0.8, 0.9, 0.5]])  # row 0 own, row 1 rest
    assert backtrack_features(head, "text", 0.5).tolist() == [True, False, False, True]
    assert backtrack_features(head, "pseudocode", 0.5).tolist() == [False, True, False, False]
    assert not backtrack_features(head, "none", 0.5).any()


def test_mc_bln_masks_whole_channels_of_the_last_site():
    torch.manual_seed(2)
    parent = ModularResNetForImageClassification(tiny_config()).eval()
    with torch.no_grad():
        parent.fc.weight.zero_()
        parent.fc.weight[0, 5] = -1.0  # feature 5 argues against "dark" and for the others: text reading removes it
        parent.fc.weight[1:, 5] = 1.0
    data = image_dataset([60, 200, 128] * 3, [0, 1, 2] * 3, noise=60)
    modules = decompose(parent, data, samples_per_class=3, progress=False)
    last = modules["dark"].layer2[0].act2.mask
    assert last is not None and not last[5].any()
    assert modules["dark"].config.provenance.details["features_removed_by_backtracking"] == 1
    assert modules["bright"].config.provenance.details["features_removed_by_backtracking"] == 0


def test_mc_bi_removes_inputs_no_kept_node_reads():
    model = ModularResNetForImageClassification(tiny_config(layers=[1], widths=[4])).eval()
    shapes = model.site_shapes()
    keep = {site: torch.ones(shape, dtype=torch.bool) for site, shape in shapes.items()}
    keep["layer1.0.act1"][:] = False
    keep["layer1.0.act2"][:] = False
    keep["layer1.0.act2"][2, 3, 4] = True  # only the identity shortcut reads the block input here
    result = backtrack_to_input(model, keep)
    expected = torch.zeros(shapes["act1"], dtype=torch.bool)
    expected[2, 3, 4] = True
    assert torch.equal(result["act1"], expected)
    # conv2 reads act1 through 3x3 windows: a kept act1 node survives only inside the window of a kept act2 node.
    keep["layer1.0.act2"][2, 3, 4] = False
    keep["layer1.0.act2"][2, 1, 1] = True
    keep["layer1.0.act1"][0, 0, 0] = True
    keep["layer1.0.act1"][0, 7, 7] = True  # outside every kept act2 node's window: removed
    result = backtrack_to_input(model, keep)
    expected_act1 = torch.zeros(shapes["layer1.0.act1"], dtype=torch.bool)
    expected_act1[0, 0, 0] = True
    assert torch.equal(result["layer1.0.act1"], expected_act1)
    # The stem site is read by conv1's window at (0, 0) (rows and columns 0-1, every channel) and the identity.
    expected = torch.zeros(shapes["act1"], dtype=torch.bool)
    expected[:, 0:2, 0:2] = True
    expected[2, 1, 1] = True
    assert torch.equal(result["act1"], expected)


def test_vote_rule():
    logits = torch.tensor(
        [
            [[2.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]],  # exactly one claim: module 0
            [[-1.0, 0.0], [-0.2, 0.0], [-3.0, 0.0]],  # no claim: highest own probability, module 1
            [[0.5, 0.0], [3.0, 0.0], [1.0, 0.0]],  # several claims: highest own probability, module 1
        ]
    )
    assert vote(logits).tolist() == [0, 1, 1]
    assert top_k(logits, 2).tolist() == [[0, 1], [1, 0], [1, 2]]


def test_module_round_trip_through_transformers_and_timm(tmp_path, brightness_model):
    from transformers import AutoModelForImageClassification

    module = decompose(brightness_model, dark_bright_dataset(), samples_per_class=6, progress=False)["dark"]
    module.save_pretrained(tmp_path / "dark")
    pixel_values = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = module(pixel_values).logits
        loaded = ModularResNetForImageClassification.from_pretrained(tmp_path / "dark").eval()
        auto = AutoModelForImageClassification.from_pretrained(tmp_path / "dark").eval()
        via_timm = timm.create_model(f"local-dir:{tmp_path / 'dark'}", pretrained=True).eval()
        assert torch.equal(loaded(pixel_values).logits, expected)
        assert torch.equal(auto(pixel_values).logits, expected)
        assert torch.equal(via_timm(pixel_values), expected)
    for name, site in module.sites().items():
        if site.mask is not None:
            assert torch.equal(loaded.get_submodule(name).mask, site.mask)
    assert loaded.config.module == module.config.module
    assert loaded.config.id2label == {0: "dark", 1: "rest"}
    with pytest.raises(StrictDataclassClassValidationError, match=r"must be 2, not 5\. A class module keeps its two"):
        AutoModelForImageClassification.from_pretrained(tmp_path / "dark", num_labels=5, ignore_mismatched_sizes=True)
    stored = load_file(tmp_path / "dark" / "model.safetensors")
    assert stored["act1.mask"].dtype == torch.bool
    assert torch.equal(hf_modular.load_module(str(tmp_path / "dark"))(pixel_values).logits, expected)
    brightness_model.save_pretrained(tmp_path / "parent")
    with pytest.raises(ValueError, match="plain classifier, not a class module"):
        hf_modular.load_module(str(tmp_path / "parent"))


def test_evaluate_resizes_images_of_another_size_and_says_so(brightness_model, caplog):
    # As transformers' pipeline does; decompose refuses them (test_bad_input_errors), so evaluate says it resized.
    ours = logging.getLogger("hf_modular")  # a CLI test may have stopped it propagating to pytest's handler
    ours.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="hf_modular"):
            large = evaluate(brightness_model, image_dataset([0, 255, 128], [0, 1, 2], size=16), progress=False)
            assert "The images are 16x16 (the first one) and the model takes 8x8" in caplog.text
            caplog.clear()
            evaluate(brightness_model, image_dataset([0, 255, 128], [0, 1, 2]), progress=False)
            assert "resizes" not in caplog.text
    finally:
        ours.removeHandler(caplog.handler)
    assert large.count == 3


def test_bad_input_errors(brightness_model):
    data = dark_bright_dataset()
    with pytest.raises(ValueError, match="has no images of 'mid', so no module of those can be built"):
        decompose(brightness_model, data.filter(lambda row: row["label"] != 2), progress=False)
    with pytest.raises(ValueError, match="does not know"):
        renamed = data.cast_column("label", datasets.ClassLabel(names=["dark", "bright", "purple"]))
        decompose(brightness_model, renamed, progress=False)
    with pytest.raises(ValueError, match="No image column"):
        no_images = data.remove_columns("image").add_column("path", ["x.png"] * len(data))
        decompose(brightness_model, no_images, progress=False)
    with pytest.raises(ValueError, match="No label column"):
        decompose(brightness_model, data.cast_column("label", datasets.Value("int64")), progress=False)
    with pytest.raises(ValueError, match="16x16 but the model takes 8x8"):
        decompose(brightness_model, image_dataset([0, 255, 128], [0, 1, 2], size=16), progress=False)
    two_labels = ModularResNetForImageClassification(tiny_config(id2label={0: "dark", 1: "bright"}))
    with pytest.raises(ValueError, match=r"labels the model does not know: \['mid'\].*select_classes"):
        decompose(two_labels, data, progress=False)
    with pytest.raises(ValueError, match="Unknown classes"):
        decompose(brightness_model, data, classes=["zebra"], progress=False)
    with pytest.raises(ValueError, match="Unknown strategy"):
        decompose(brightness_model, data, strategy="magic", progress=False)
    with pytest.raises(ValueError, match="backtrack="):
        decompose(brightness_model, data, backtrack="sideways", progress=False)
    module = decompose(brightness_model, data, samples_per_class=6, progress=False)["dark"]
    with pytest.raises(ValueError, match="defined on 8x8 inputs"):
        module(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"are \(1, 4, 8, 8\), but the model takes \(batch, 3, height, width\)"):
        brightness_model(torch.zeros(1, 4, 8, 8))  # said as transformers' ResNet says it, not a conv's shape error
    with pytest.raises(ValueError, match="already a class module"):
        decompose(module, data, progress=False)
    with pytest.raises(ValueError, match="already a class module"):  # before 'Decomposing into cat, rest'
        decompose_to_directory(module, data, "unused-output", progress=False)
    with pytest.raises(ValueError, match="not a ClassLabel.*class_encode_column"):
        decompose(brightness_model, data.cast_column("label", datasets.Value("int64")), label_column="label")
    clashing = ModularResNetForImageClassification(tiny_config(id2label={0: "t shirt", 1: "t-shirt", 2: "mid"}))
    with pytest.raises(ValueError, match="would both be saved as 't-shirt-module'"):
        decompose_to_directory(clashing, data, "unused-output", progress=False)


def test_decompose_to_directory_reports_and_resumes(tmp_path, brightness_model):
    data = dark_bright_dataset()
    output = tmp_path / "modules"
    report = decompose_to_directory(
        brightness_model, data, output, eval_dataset=data, samples_per_class=6, progress=False
    )
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == [  # not the run's lock file
        "bright-module",
        "dark-module",
        "decomposition.json",
        "mid-module",
    ]
    assert json.loads((output / "decomposition.json").read_text()) == report
    evaluation = report["evaluation"]
    assert evaluation["images"] == len(data) and evaluation["classes"] is None  # every class: no subset to name
    assert 0.0 <= evaluation["composed"]["top1"] <= evaluation["composed"]["top5"] <= 1.0
    assert all(0.0 <= row["binary_accuracy"] <= 1.0 for row in report["modules"].values())
    assert not any(row["resumed"] for row in report["modules"].values())

    # An interrupted run leaves complete directories only; the rerun rebuilds just what is missing.
    weights = output / "dark-module" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    for path in (output / "mid-module").iterdir():
        path.unlink()
    (output / "mid-module").rmdir()
    report = decompose_to_directory(brightness_model, data, output, samples_per_class=6, progress=False)
    assert {label: row["resumed"] for label, row in report["modules"].items()} == {
        "dark": True,
        "bright": True,
        "mid": False,
    }
    assert weights.stat().st_mtime_ns == before
    # Other parameters, or other data: nothing is reused (and the earlier modules are replaced only on request).
    with pytest.raises(FileExistsError, match="not built by this decomposition"):
        decompose_to_directory(brightness_model, data, output, samples_per_class=5, progress=False)
    report = decompose_to_directory(brightness_model, data, output, samples_per_class=5, overwrite=True, progress=False)
    assert not any(row["resumed"] for row in report["modules"].values())
    other_data = image_dataset([10] * 6 + [240] * 6 + [100] * 6, [0] * 6 + [1] * 6 + [2] * 6)
    report = decompose_to_directory(
        brightness_model, other_data, output, samples_per_class=5, dataset_revision=None, overwrite=True, progress=False
    )
    assert not any(row["resumed"] for row in report["modules"].values())
    assert not list(tmp_path.glob("**/*.partial"))


class _StopAfterSaves(logging.Handler):
    """Ctrl-C as a user presses it between two modules: a KeyboardInterrupt raised from inside the run, at the log
    record `decompose_to_directory` emits once a module is saved (a real point of the code, not a replaced one)."""

    def __init__(self, saves: int):
        super().__init__(logging.INFO)
        self.saves = saves

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Saved "):
            self.saves -= 1
            if self.saves == 0:
                raise KeyboardInterrupt


def _random_parent() -> ModularResNetForImageClassification:
    torch.manual_seed(0)
    model = ModularResNetForImageClassification(tiny_config(layers=[2, 2])).eval()
    with torch.no_grad():  # random batch-norm statistics, so that the modules differ from class to class
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.3)
    return model


def _module_files(directory) -> dict:
    """A module directory's tensors, and its config without what differs between runs by nature (when and at what
    cost it was built)."""
    config = json.loads((directory / "config.json").read_text())
    config["module"] = {k: v for k, v in config["module"].items() if k not in ("compute", "created")}
    return {"tensors": load_file(directory / "model.safetensors"), "config": config}


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "activation"},
        {"strategy": "channel", "keep": 0.5, "distill_steps": 3, "distill_images": 12, "distill_batch_size": 4},
    ],
    ids=["activation", "channel"],
)
def test_an_interrupted_decomposition_keeps_its_saved_modules_and_the_rerun_matches_an_uninterrupted_one(
    tmp_path, options
):
    parent = _random_parent()
    data = image_dataset([30, 220, 128] * 8, [0, 1, 2] * 8, noise=30)
    run = dict(eval_dataset=data, samples_per_class=4, progress=False, **options)
    reference = decompose_to_directory(parent, data, tmp_path / "uninterrupted", **run)

    output = tmp_path / "interrupted"
    library = logging.getLogger("hf_modular")
    stop, level = _StopAfterSaves(1), library.level
    library.setLevel(logging.INFO)
    library.addHandler(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            decompose_to_directory(parent, data, output, **run)
    finally:
        library.removeHandler(stop)
        library.setLevel(level)
    # The first module was saved as soon as it was built, whole; the others were not built, nor the report written.
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == ["dark-module"]
    assert not list(output.glob(".*.partial"))
    weights = output / "dark-module" / "model.safetensors"
    saved_at = weights.stat().st_mtime_ns
    cost = json.loads((output / "dark-module" / "config.json").read_text())["module"]["compute"]
    assert cost["modules_built"] == 1 and 0 < cost["statistics_seconds"] < cost["wall_seconds"]  # the run up to it
    assert cost["co2e_kg"] > 0

    resumed = decompose_to_directory(parent, data, output, **run)  # the same command again
    assert {label: row["resumed"] for label, row in resumed["modules"].items()} == {
        "dark": True,
        "bright": False,
        "mid": False,
    }
    assert weights.stat().st_mtime_ns == saved_at  # skipped, not rebuilt
    for label in LABELS:
        name = f"{label}-module"
        ours, theirs = _module_files(output / name), _module_files(tmp_path / "uninterrupted" / name)
        assert ours["config"] == theirs["config"], label
        assert ours["tensors"].keys() == theirs["tensors"].keys()
        for key, tensor in ours["tensors"].items():
            assert torch.equal(tensor, theirs["tensors"][key]), (label, key)
    # The report is the uninterrupted run's, but for which modules were resumed and how long it all took.
    for report in (resumed, reference):
        for row in report["modules"].values():
            del row["resumed"]
        del report["timings"]
    assert resumed == reference
    # The modules built by the rerun record its cost: two modules, the interrupted run's first one its own.
    built = {
        label: json.loads((output / f"{label}-module" / "config.json").read_text())["module"]["compute"]
        for label in LABELS
    }
    assert {label: record["modules_built"] for label, record in built.items()} == {"dark": 1, "bright": 2, "mid": 2}
    assert built["bright"] == built["mid"]  # one run's whole cost, shared by its modules


def test_ctrl_c_during_the_decompose_command_says_what_it_kept_and_the_same_command_resumes(tmp_path, capsys):
    _random_parent().save_pretrained(tmp_path / "parent")
    image_dataset([30, 220, 128] * 8, [0, 1, 2] * 8, noise=30).to_parquet(str(tmp_path / "train.parquet"))
    output = tmp_path / "modules"
    command = ["decompose", str(tmp_path / "parent"), "--dataset", str(tmp_path / "train.parquet"), "--output"]
    command += [str(output), "--samples-per-class", "4"]
    # On the module's logger: the command sets up the library's own handlers, and this one must come first.
    saving = logging.getLogger("hf_modular.decompose.output")
    stop = _StopAfterSaves(2)
    saving.addHandler(stop)
    try:
        assert main(command) == 130  # the shell's code for Ctrl-C
    finally:
        saving.removeHandler(stop)
    error = capsys.readouterr().err
    kept = f"interrupted. Rerun the same command to resume: the modules it finished writing are kept (2 in {output})"
    assert kept in error, error
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == ["bright-module", "dark-module"]
    assert main(command) == 0
    report = json.loads((output / "decomposition.json").read_text())
    assert {label: row["resumed"] for label, row in report["modules"].items()} == {
        "dark": True,
        "bright": True,
        "mid": False,
    }


def test_eval_limit_counts_images_of_the_classes_decomposed(tmp_path, brightness_model, capsys):
    data = dark_bright_dataset()  # 6 dark images first, then 6 bright and 6 mid
    options = {"eval_dataset": data, "classes": ["bright", "mid"], "samples_per_class": 6, "progress": False}
    report = decompose_to_directory(brightness_model, data, tmp_path / "limited", eval_limit=8, **options)
    assert report["evaluation"]["images"] == 8  # not the 2 bright images among the first 8 rows
    assert set(report["evaluation"]["per_class"]) == {"bright", "mid"}  # 6 bright images, then 2 mid ones
    assert decompose_to_directory(brightness_model, data, tmp_path / "all", **options)["evaluation"]["images"] == 12
    # The figures say they are of a subset: the composition chose between two classes, the parent among three.
    assert report["evaluation"]["classes"] == ["bright", "mid"]
    card = (tmp_path / "limited" / "mid-module" / "README.md").read_text()
    assert "(8 images of the 2 classes decomposed together: bright, mid; the composition chooses among these" in card
    # The parent is measured again choosing between those two classes only, its 'dark' logit left out.
    measured = data.select(range(6, 14))  # the 8 images: 6 bright, then 2 mid
    pixels = image_processor_for(brightness_model.config)(list(measured["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = brightness_model(pixels).logits
    among = (logits[:, 1:].argmax(1) + 1 == torch.tensor(list(measured["label"]))).float().mean().item()
    overall = (logits.argmax(1) == torch.tensor(list(measured["label"]))).float().mean().item()
    evaluation = report["evaluation"]
    assert evaluation["parent_among_classes"]["top1"] == pytest.approx(among) and among != overall
    assert evaluation["parent"]["top1"] == pytest.approx(overall)
    assert f"| parent (these classes only) | {100 * among:.2f}% | 100.00% |" in card
    # `evaluate --limit` of a composition counts its classes' images too.
    data.to_parquet(str(tmp_path / "test.parquet"))
    members = [str(tmp_path / "limited" / f"{label}-module") for label in ("bright", "mid")]
    assert main(["-q", "compose", *members, "--output", str(tmp_path / "pair")]) == 0
    assert (
        main(["-q", "evaluate", str(tmp_path / "pair"), "--dataset", str(tmp_path / "test.parquet"), "--limit", "8"])
        == 0
    )
    assert "on 8 images" in capsys.readouterr().out
    with pytest.raises(
        ValueError, match=r"\(split 'test'\): it has no images of the classes decomposed \(bright, mid\)"
    ):
        dark_only = data.select(range(6))
        decompose_to_directory(brightness_model, data, tmp_path / "none", **{**options, "eval_dataset": dark_only})
    with pytest.raises(ValueError, match=r"its 'label' column has no labels \(every row is -1, unlabelled\)"):
        unlabelled = image_dataset([0, 255, 128], [-1, -1, -1])
        decompose_to_directory(brightness_model, data, tmp_path / "none", **{**options, "eval_dataset": unlabelled})
    assert not (tmp_path / "none").exists()


def test_cli_decompose(tmp_path, brightness_model, capsys):
    from hf_modular.cli import main

    brightness_model.save_pretrained(tmp_path / "parent")
    dark_bright_dataset().to_parquet(str(tmp_path / "train.parquet"))
    code = main(
        [
            "-q",
            "decompose",
            str(tmp_path / "parent"),
            "--dataset",
            str(tmp_path / "train.parquet"),
            "--eval-split",
            "train",
            "--samples-per-class",
            "6",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "composed  top-1" in out and "dark" in out
    module = ModularResNetForImageClassification.from_pretrained(tmp_path / "out" / "dark-module")
    assert module.config.provenance.target_label == "dark"
    assert main(["info", str(tmp_path / "out")]) == 0  # the output described from its report
    described = capsys.readouterr().out
    assert "activation" in described and "dark: dark-module" in described and "composed top-1" in described
    assert main(["info", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "out" / "decomposition.json").read_text())
    code = main(["decompose", str(tmp_path / "missing"), "--dataset", "x.parquet", "--output", str(tmp_path / "o")])
    assert code == 1
    assert "error" in capsys.readouterr().err
