"""Strategies as plug-ins, the typed provenance record, and every CLI command on modules of both strategies.

A new strategy is one class and one registration: `decompose`, the CLI's options, cards, `hf-modular info` and the
decomposition report then know it. Modules saved by release 0.1.0 (tests/fixtures, schema 1) still load, with the
same logits, and read through the current record.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import hf_modular
from hf_modular import ComposedModel, ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.cli import build_parser, main
from hf_modular.decompose import STRATEGIES, Strategy, decompose, planned_modules, register_strategy
from hf_modular.decompose.build import build_module
from hf_modular.decompose.heads import channel_head
from hf_modular.decompose.output import decompose_to_directory
from hf_modular.decompose.statistics import collect_activity
from hf_modular.decompose.strategies.base import PIPELINE_OPTIONS
from hf_modular.hub import module_card
from hf_modular.module import SCHEMA_VERSION, ModuleDescription, ModuleProvenance, describe
from hf_modular.module.description import _DESCRIBERS
from tests.hub_server import DEFAULT_USER, HubServer, hub_server_fixture  # noqa: F401
from tests.test_decompose import image_dataset, tiny_config

RELEASE_0_1_0 = Path(__file__).parent / "fixtures" / "release-0.1.0"
NAMES = ["dark", "bright", "mid"]


def _parent() -> ModularResNetForImageClassification:
    torch.manual_seed(0)
    model = ModularResNetForImageClassification(tiny_config(layers=[2, 2], id2label=dict(enumerate(NAMES))))
    with torch.no_grad():  # random batch-norm statistics, so channels differ
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.bias.uniform_(-0.1, 0.3)
    return model.eval()


def _data():
    return image_dataset([30, 220, 128] * 6, [0, 1, 2] * 6, noise=30, names=NAMES)


# --- modules saved by an earlier release ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["activation/cat-module", "channel/dog-module", "parent"])
def test_release_0_1_0_directories_load_with_the_same_logits(name):
    expected = json.loads((RELEASE_0_1_0 / "expected_logits.json").read_text())
    model = ModularResNetForImageClassification.from_pretrained(RELEASE_0_1_0 / name)
    pixel_values = torch.linspace(-2, 2, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, torch.tensor(expected["logits"][name]))


def test_release_0_1_0_provenance_is_upgraded_to_the_current_schema():
    raw = json.loads((RELEASE_0_1_0 / "activation/cat-module/config.json").read_text())["module"]
    assert "schema_version" not in raw and "masked_fraction" in raw and "sites" in raw["method"]  # schema 1 on disk

    info = ModularResNetConfig.from_pretrained(RELEASE_0_1_0 / "activation/cat-module").provenance
    assert info.schema_version == SCHEMA_VERSION
    assert info.method.strategy == "activation" and info.method.parameters["sites"] == raw["method"]["sites"]
    assert info.details["masked_fraction"] == raw["masked_fraction"]
    assert info.details["jaccard_index"] == raw["jaccard_index"]
    assert info.parent.weights_sha256 == raw["parent"]["weights_sha256"]
    assert info.evaluation["binary_accuracy"] == raw["evaluation"]["binary_accuracy"]

    compact = ModularResNetConfig.from_pretrained(RELEASE_0_1_0 / "channel/dog-module").provenance
    assert compact.method.parameters["keep"] == 0.5 and "macs_fraction" in compact.details
    for name in ("activation/cat-module", "channel/dog-module"):  # cards render from the upgraded record
        config = ModularResNetConfig.from_pretrained(RELEASE_0_1_0 / name)
        card = module_card(config).content
        assert f"class module** for `{config.provenance.target_label}`" in card
        assert describe(config.provenance).summary in card


def test_an_activation_cards_summary_says_which_nodes_are_masked():
    info = ModularResNetConfig.from_pretrained(RELEASE_0_1_0 / "activation/cat-module").provenance
    summary = describe(info).summary
    assert "stayed at or below zero on every image it was decomposed with" in summary
    assert "the paper's backtracking" in summary  # the release's module was backtracked (the default reading)
    info.method.parameters["backtrack"] = "none"
    assert "backtracking" not in describe(info).summary


def test_release_0_1_0_modules_compose_and_save_in_the_current_schema(tmp_path):
    composed = ComposedModel.from_modules(
        [str(RELEASE_0_1_0 / "activation/cat-module"), str(RELEASE_0_1_0 / "channel/dog-module")]
    )
    assert composed.labels == ["cat", "dog"]
    module = hf_modular.load_module(RELEASE_0_1_0 / "activation/cat-module")
    module.save_pretrained(tmp_path / "resaved")
    saved = json.loads((tmp_path / "resaved" / "config.json").read_text())["module"]
    assert saved["schema_version"] == SCHEMA_VERSION and "masked_fraction" in saved["details"]


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        (lambda m: "garbage", "`module` must be an object"),
        (lambda m: {**m, "parent": {**m["parent"], "weights_sha256": 5}}, "module.parent.weights_sha256"),
        (lambda m: {k: v for k, v in m.items() if k != "target_label"}, "module.target_label"),
        (lambda m: {**m, "schema_version": 99}, "module.schema_version"),
        (lambda m: {**m, "surprise": 1}, "unknown fields ['surprise']"),
        (lambda m: {**m, "sampling": {**m["sampling"], "negatives_ratio": True}}, "module.sampling.negatives_ratio"),
    ],
)
def test_a_malformed_module_section_is_refused_with_the_field_name(tmp_path, change, field_name):
    directory = tmp_path / "module"
    shutil.copytree(RELEASE_0_1_0 / "activation/cat-module", directory)
    config = json.loads((directory / "config.json").read_text())
    config["module"] = change(config["module"])
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=field_name.replace("[", r"\[").replace("]", r"\]")):
        ModularResNetForImageClassification.from_pretrained(directory)


# --- a third strategy, added from outside the package ------------------------------------------------------------


@dataclass
class WholeParentStrategy(Strategy):
    """A strategy that keeps every node: the parent with the channeled head (a baseline)."""

    scale: float = field(default=1.0, metadata={"help": "multiplies the head"})
    name: ClassVar[str] = "whole"
    headline: ClassVar[str] = "kept_fraction"
    headline_format: ClassVar[str] = "{:.0%} kept"

    def observe(self, parent, dataset, plan, *, image_column, label_column, batch_size, state, progress, **context):
        return collect_activity(
            parent,
            dataset,
            plan,
            image_column=image_column,
            label_column=label_column,
            batch_size=batch_size,
            state=state,
            observe=False,
            progress=progress,
        )

    def build(self, parent, observations, plan, **context):
        built = []
        for class_index in plan.classes:
            weight, bias = channel_head(parent.fc.weight.detach(), parent.fc.bias.detach(), class_index)
            built.append((build_module(parent, {}, self.scale * weight, self.scale * bias), {"kept_fraction": 1.0}))
        return built

    @classmethod
    def describe(cls, info: ModuleProvenance) -> ModuleDescription:
        return ModuleDescription(
            summary="It is the whole parent.",
            head="Its head is the channeled head.",
            rows=[("Kept", "everything")],
            measures={"kept": f"{100 * info.details['kept_fraction']:.0f}%"},
            figures={"kept_fraction": info.details["kept_fraction"]},
        )


@pytest.fixture
def whole_strategy():
    register_strategy(WholeParentStrategy)  # the one registration line a new strategy needs
    yield WholeParentStrategy
    STRATEGIES.pop("whole")
    _DESCRIBERS.pop("whole")


def test_a_new_strategy_is_one_class_and_one_registration(tmp_path, capsys, whole_strategy):
    parent, data = _parent(), _data()
    modules = decompose(parent, data, strategy="whole", scale=2.0, samples_per_class=3, progress=False)
    cat = modules["bright"]
    assert cat.config.provenance.method.parameters == {"scale": 2.0}
    with torch.no_grad():
        x = torch.randn(2, 3, 8, 8)
        own, rest = channel_head(parent.fc.weight, parent.fc.bias, 1)
        expected = 2.0 * (parent.forward_head(parent.forward_features(x), pre_logits=True) @ own.T + rest)
        torch.testing.assert_close(cat(x).logits, expected)
    assert "It is the whole parent." in module_card(cat.config).content
    assert describe(cat.config.provenance).measures == {"kept": "100%"}

    parent.save_pretrained(tmp_path / "parent")
    data.to_parquet(str(tmp_path / "train.parquet"))
    help_text = build_parser()._subparsers._group_actions[0].choices["decompose"].format_help()
    assert "--scale" in help_text and "whole" in help_text
    arguments = ["-q", "decompose", str(tmp_path / "parent"), "--dataset", str(tmp_path / "train.parquet")]
    assert main([*arguments, "--strategy", "whole", "--scale", "3", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "(100% kept)" in out and "kept" in out.splitlines()[1]
    report = json.loads((tmp_path / "out" / "decomposition.json").read_text())
    assert report["mean_kept_fraction"] == 1.0 and report["method"] == {"strategy": "whole", "scale": 3.0}
    assert main(["info", str(tmp_path / "out" / "dark-module")]) == 0
    assert "kept" in capsys.readouterr().out
    # An option of another strategy is refused, naming it.
    assert main([*arguments, "--strategy", "whole", "--keep", "0.5", "--output", str(tmp_path / "o2")]) == 1
    assert "--keep is not an option of --strategy whole" in capsys.readouterr().err


def _strategy_with(option: str, annotation: type, default, name: str = "clashing") -> type[Strategy]:
    """A WholeParentStrategy under another name, with one more option."""
    cls = dataclasses.make_dataclass(
        "Clashing", [(option, annotation, field(default=default))], bases=(WholeParentStrategy,)
    )
    cls.name = name
    return cls


def test_a_strategy_is_refused_a_name_or_option_already_taken(whole_strategy):
    register_strategy(WholeParentStrategy)  # the same class again (a module reloaded) is fine
    try:
        with pytest.raises(ValueError, match=r"A strategy named 'activation' is registered already \(hf_modular\."):
            register_strategy(_strategy_with("scale_too", float, 1.0, name="activation"))
        for reserved in ("seed", "eval_dataset"):  # decompose's keyword, decompose_to_directory's
            with pytest.raises(ValueError, match=rf"option {reserved} is the decomposition's own"):
                register_strategy(_strategy_with(reserved, int, 0))
        with pytest.raises(ValueError, match=r"'keep' \(float, default 0\.9\) .* the 'channel' strategy's \(float, "):
            register_strategy(_strategy_with("keep", float, 0.9))
        assert "clashing" not in STRATEGIES and STRATEGIES["activation"].__name__ == "ActivationStrategy"
        keywords = {*inspect.signature(decompose).parameters, *inspect.signature(decompose_to_directory).parameters}
        assert set(PIPELINE_OPTIONS) == keywords - {"options"}  # the list keeps up
        # A name only the command line has is found when the command's options are made.
        register_strategy(_strategy_with("push_to", str, "x"))
        with pytest.raises(ValueError, match=r"The option 'push_to' of the clashing strategy is a flag of"):
            build_parser()
    finally:
        STRATEGIES.pop("clashing", None)
        _DESCRIBERS.pop("clashing", None)


def test_cli_options_come_from_the_strategy_fields():
    decompose_help = build_parser()._subparsers._group_actions[0].choices["decompose"]
    flags = {action.dest: action for action in decompose_help._actions}
    for strategy in STRATEGIES.values():
        for option in dataclasses.fields(strategy):
            assert option.name in flags, option.name
            stated = f"(default: {option.default})" if option.default is not None else "default: "
            assert stated in flags[option.name].help, option.name
    assert flags["sites"].choices == ("relu", "conv") and flags["importance"].choices == ("taylor", "activation")


# --- every command on modules of both strategies -----------------------------------------------------------------


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory):
    root = tmp_path_factory.mktemp("both")
    _parent().save_pretrained(root / "parent")
    _data().to_parquet(str(root / "train.parquet"))
    common = ["-q", "decompose", str(root / "parent"), "--dataset", str(root / "train.parquet")]
    common += ["--samples-per-class", "4", "--eval-split", "train"]
    assert main([*common, "--output", str(root / "activation")]) == 0
    channel = ["--strategy", "channel", "--distill-steps", "3", "--distill-images", "12", "--no-mirror"]
    assert main([*common, *channel, "--output", str(root / "channel")]) == 0
    return root


@pytest.mark.parametrize("strategy", ["activation", "channel"])
def test_every_cli_command_on_modules_of_each_strategy(decomposed, strategy, capsys, tmp_path, hub_server: HubServer):
    directory = decomposed / strategy
    module = directory / "bright-module"
    info = ModularResNetConfig.from_pretrained(module).provenance
    assert info.method.strategy == strategy

    assert main(["info", str(module)]) == 0  # a channel module crashed here (KeyError on masked_fraction)
    out = capsys.readouterr().out
    for measure in describe(info).measures:
        assert measure in out
    assert main(["info", str(module), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["module"]["method"]["strategy"] == strategy

    assert main(["card", str(module), "--repo-id", "org/bright"]) == 0
    assert describe(info).summary in (module / "README.md").read_text()

    composed = tmp_path / "composed"
    modules = [str(directory / f"{label}-module") for label in NAMES]
    assert main(["compose", *modules, "--output", str(composed)]) == 0
    other = decomposed / ({"activation": "channel", "channel": "activation"}[strategy]) / "mid-module"
    assert main(["replace", str(composed), "mid", str(other)]) == 0  # the other strategy's module, same parent
    assert main(["evaluate", str(composed), "--dataset", str(decomposed / "train.parquet"), "--split", "train"]) == 0
    assert "top-1" in capsys.readouterr().out

    assert main(["push", str(directory), "--namespace", DEFAULT_USER, "--name-template", f"{strategy}-{{label}}"]) == 0
    pushed = hf_modular.load_module(f"{DEFAULT_USER}/{strategy}-bright")
    assert pushed.config.provenance.method.strategy == strategy


@pytest.mark.parametrize("strategy", ["activation", "channel"])
def test_planned_modules_are_what_the_decomposition_builds(decomposed, strategy):
    """`decompose --push-to` checks the repos with these before it runs: they must say what it then builds."""
    options = {"distill_steps": 3, "distill_images": 12, "mirror": False} if strategy == "channel" else {}
    parent = ModularResNetForImageClassification.from_pretrained(decomposed / "parent")
    planned = planned_modules(
        parent, decomposed / "train.parquet", samples_per_class=4, strategy=strategy, batch_size=7, **options
    )
    assert list(planned) == NAMES
    for label, config in planned.items():
        built = ModularResNetConfig.from_pretrained(decomposed / strategy / f"{label}-module")
        plan, made = config.provenance, built.provenance
        assert (plan.target_label, plan.target_index) == (made.target_label, made.target_index)
        assert (plan.parent, plan.method, plan.sampling) == (made.parent, made.method, made.sampling)
        for field_name in ("name_or_path", "split", "config_name", "revision"):
            assert getattr(plan.dataset, field_name) == getattr(made.dataset, field_name), field_name
        assert (config.id2label, config.preset) == (built.id2label, built.preset)
    with pytest.raises(ValueError, match="Unknown classes"):
        planned_modules(parent, "data", classes=["cat"])


def test_continuous_learning_refuses_compact_modules_clearly(decomposed):
    compact = hf_modular.load_module(decomposed / "channel" / "bright-module")
    masked = hf_modular.load_module(decomposed / "activation" / "dark-module")
    with pytest.raises(ValueError, match="built by the 'channel' strategy, whose modules have no masks"):
        hf_modular.continuous_learning([masked, compact], _data(), progress=False)
