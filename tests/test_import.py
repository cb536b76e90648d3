"""import_cifar_resnet: akamaster-layout checkpoints, refusal of unsafe or broken files, and the real checkpoints'
documented accuracy on CIFAR-10 (../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_modular import ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.evaluation import evaluate
from hf_modular.models import CIFAR10_LABELS, import_cifar_resnet
from tests.conftest import randomize_


def _images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("blocks_per_stage", "preset"), [(3, "modular_resnet20"), (1, None)])
def test_akamaster_checkpoint_imports_with_equal_logits(akamaster_checkpoint, blocks_per_stage, preset):
    path, reference = akamaster_checkpoint(blocks_per_stage=blocks_per_stage)
    model = import_cifar_resnet(path)
    assert type(model) is ModularResNetForImageClassification
    assert not model.training
    config = model.config
    assert config.preset == preset
    assert config.layers == [blocks_per_stage] * 3 and config.widths == [16, 32, 64]
    assert config.shortcut == "A" and config.stem_type == "cifar" and config.block_type == "basic"
    assert [config.id2label[i] for i in range(10)] == list(CIFAR10_LABELS)
    assert config.label2id == {label: i for i, label in enumerate(CIFAR10_LABELS)}
    x = _images()
    with torch.no_grad():
        expected = reference(x)
        assert expected.std() > 1e-2
        torch.testing.assert_close(model(x).logits, expected, atol=1e-5, rtol=1e-5)


def test_custom_labels(akamaster_checkpoint):
    path, _ = akamaster_checkpoint(blocks_per_stage=1, num_classes=3)
    model = import_cifar_resnet(path, labels=["red", "green", "blue"])
    assert model.config.id2label == {0: "red", 1: "green", 2: "blue"}
    assert model.fc.out_features == 3


def test_wrong_label_count_raises(akamaster_checkpoint):
    path, _ = akamaster_checkpoint(blocks_per_stage=1)
    with pytest.raises(ValueError, match="10 outputs but 2 labels"):
        import_cifar_resnet(path, labels=["a", "b"])


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        import_cifar_resnet(tmp_path / "absent.th")


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_corrupt_file_raises_value_error(akamaster_checkpoint, damage):
    path, _ = akamaster_checkpoint(blocks_per_stage=1)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(
            bytes(torch.randint(0, 256, (len(data),), generator=torch.Generator().manual_seed(0)).tolist())
        )
    with pytest.raises(ValueError, match="not a readable weights-only torch checkpoint"):
        import_cifar_resnet(path)


def _write_marker(path: str) -> str:
    Path(path).write_text("code ran")
    return "payload"


class _Payload:
    """Unpickling this object calls `_write_marker`: proof that arbitrary code would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _write_marker, (self.marker,)


def test_pickled_object_is_refused_without_running_it(tmp_path, akamaster_checkpoint):
    path, reference = akamaster_checkpoint(blocks_per_stage=1)
    payload = torch.load(path, weights_only=True)
    marker = tmp_path / "marker"
    payload["state_dict"]["module.extra"] = _Payload(marker)
    torch.save(payload, path)

    with pytest.raises(ValueError, match="weights-only"):
        import_cifar_resnet(path)
    assert not marker.exists()

    # Control: an unrestricted load of the same file does run the payload.
    assert torch.load(path, weights_only=False)["state_dict"]["module.extra"] == "payload"
    assert marker.read_text() == "code ran"


def test_plain_python_values_are_not_a_state_dict(tmp_path):
    path = tmp_path / "numbers.th"
    torch.save({"best_prec1": 90.0, "state_dict": {"module.conv1.weight": [1.0, 2.0]}}, path)
    with pytest.raises(ValueError, match="state dict of tensors"):
        import_cifar_resnet(path)
    pickle_path = tmp_path / "list.th"
    torch.save([torch.zeros(1)], pickle_path)
    with pytest.raises(ValueError, match="state dict of tensors"):
        import_cifar_resnet(pickle_path)


def test_checkpoint_missing_a_tensor_raises(akamaster_checkpoint):
    path, _ = akamaster_checkpoint(blocks_per_stage=1)
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["module.layer2.0.bn1.running_var"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"missing \['layer2\.0\.bn1\.running_var'\]"):
        import_cifar_resnet(path)


def test_option_b_checkpoint_is_rejected(akamaster_checkpoint):
    # A CIFAR ResNet with projection shortcuts is not akamaster's option A: its extra tensors must not be dropped.
    path, _ = akamaster_checkpoint(blocks_per_stage=1)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["module.layer2.0.shortcut.0.weight"] = torch.zeros(32, 16, 1, 1)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="unexpected"):
        import_cifar_resnet(path)


# Documented in ../shared/README.md: accuracy on data/cifar10-jpeg/test.parquet, and parameter counts (millions).
REAL_CHECKPOINTS = [
    ("resnet20-12fca82f.th", "modular_resnet20", 81.03, 98.72, 0.27),
    ("resnet32-d509ac18.th", "modular_resnet32", 82.56, 99.00, 0.46),
    ("resnet44-014dd654.th", "modular_resnet44", 82.67, 98.84, 0.66),
    ("resnet56-4bfd9763.th", "modular_resnet56", 83.20, 98.95, 0.85),
]


def _real_checkpoint(shared_dir: Path, filename: str) -> Path:
    path = shared_dir / "models" / "akamaster-cifar-resnet" / filename
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.parametrize(("filename", "preset", "top1", "top5", "params_m"), REAL_CHECKPOINTS)
def test_real_checkpoints_import_as_their_preset(shared_dir, filename, preset, top1, top5, params_m):
    model = import_cifar_resnet(_real_checkpoint(shared_dir, filename))
    assert model.config.preset == preset
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m


def test_a_real_checkpoint_reaches_its_documented_accuracy(shared_dir, cifar10_test_split, tmp_path):
    """ResNet-20's, on all 10,000 test images. (The deeper ones go through the same import, each block like
    ResNet-20's; `benchmarks/decompose_cifar10.py` measures ResNet-56's accuracy beside its modules.)"""
    filename, preset, top1, top5, _ = REAL_CHECKPOINTS[0]
    model = import_cifar_resnet(_real_checkpoint(shared_dir, filename))
    # Evaluate what a user gets back from disk, not only the in-memory import.
    model.save_pretrained(tmp_path / preset)
    reloaded = ModularResNetForImageClassification.from_pretrained(tmp_path / preset)
    result = evaluate(reloaded, cifar10_test_split, progress=False)
    assert result.count == len(cifar10_test_split) == 10_000
    assert abs(100 * result.top1 - top1) <= 0.05 + 1e-6, result.top1
    assert abs(100 * result.top5 - top5) <= 0.05 + 1e-6, result.top5
    assert set(result.per_class) == set(CIFAR10_LABELS)


def test_synthetic_checkpoint_has_the_real_layout(shared_dir, akamaster_checkpoint):
    # The synthetic checkpoints above stand in for the real files: same top-level keys, tensor names and shapes.
    path = shared_dir / "models" / "akamaster-cifar-resnet" / "resnet20-12fca82f.th"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    real = torch.load(path, map_location="cpu", weights_only=True)
    synthetic = torch.load(akamaster_checkpoint(blocks_per_stage=3)[0], weights_only=True)
    assert set(real) >= set(synthetic) == {"best_prec1", "state_dict"}
    assert {k: v.shape for k, v in real["state_dict"].items()} == {
        k: v.shape for k, v in synthetic["state_dict"].items()
    }


# --- transformers' own ResNets (microsoft/resnet-18/50 layout) ------------------------------------------------------


def _transformers_resnet(layer_type: str):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        layer_type=layer_type,
        embedding_size=8,
        hidden_sizes=[8, 16, 32] if layer_type == "basic" else [16, 32, 64],
        depths=[1, 2, 1],
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "bird"},
        label2id={"cat": 0, "dog": 1, "bird": 2},
    )
    return randomize_(ResNetForImageClassification(config)).eval()


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_transformers_resnets_import_with_the_same_logits(tmp_path, layer_type):
    from transformers import ConvNextImageProcessor

    original = _transformers_resnet(layer_type)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = original(x).logits
    assert not torch.allclose(expected[0], expected[1])
    converted = ModularResNetForImageClassification.from_transformers(original).eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(x).logits, expected)
    assert converted.config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert converted.config.origin is None  # an object built in memory has nowhere to point at

    # A saved directory, as a Hub repo holds it: the model and its image processor (here with its own statistics).
    original.save_pretrained(tmp_path / "hf-resnet")
    ConvNextImageProcessor(
        size={"shortest_edge": 64}, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]
    ).save_pretrained(tmp_path / "hf-resnet")
    assert main(["-q", "import", str(tmp_path / "hf-resnet"), "--output", str(tmp_path / "ours")]) == 0
    imported = ModularResNetForImageClassification.from_pretrained(tmp_path / "ours").eval()
    assert imported.config.image_mean == [0.5, 0.5, 0.5] and imported.config.image_std == [0.25, 0.25, 0.25]
    assert imported.config.image_size == 64  # a fine-tune's own input size, not ImageNet's 224
    origin = imported.config.origin
    assert origin["source"] == str(tmp_path / "hf-resnet") and origin["format"].startswith("transformers")
    assert "revision" not in origin and "sha256" not in origin  # a local directory: no commit to name
    with torch.no_grad():
        torch.testing.assert_close(imported(x).logits, expected)


def test_unsupported_transformers_resnets_are_refused():
    original = _transformers_resnet("bottleneck")
    original.config.downsample_in_bottleneck = True
    with pytest.raises(ValueError, match="downsample_in_bottleneck"):
        ModularResNetForImageClassification.from_transformers(original)
    with pytest.raises(TypeError, match="ResNetForImageClassification"):
        ModularResNetForImageClassification.from_transformers(torch.nn.Linear(2, 2))
