"""`import hf_modular` and `hf-modular --help` load no torch, and the classes are still registered with transformers
and timm whichever is imported first. Each case runs in a fresh interpreter (this one has everything loaded); they
all start at once, since an interpreter spends its first seconds importing, on one core."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "transformers", "timm", "datasets", "accelerate")

NO_HEAVY_LIBRARY = f"""
import contextlib, io, sys
import hf_modular
from hf_modular.cli import main
for argv in (["--help"], ["--version"], ["nonsense"], []):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            main(argv)
        except SystemExit as exit:
            code = exit.code
    print(argv, code, "decompose a classifier" in out.getvalue(), "invalid choice" in err.getvalue())
print("loaded:", sorted(name for name in {HEAVY!r} if name in sys.modules))
"""

REGISTERED = """
from transformers import AutoBackbone, AutoConfig, AutoModelForImageClassification
import timm
config = AutoConfig.for_model("modular_resnet", layers=[1, 1, 1], widths=[4, 8, 16], num_labels=3)
print(type(AutoModelForImageClassification.from_config(config)).__name__)
print(type(AutoBackbone.from_config(config)).__name__)
print(type(AutoConfig.for_model("modular_composed")).__name__)
print(type(timm.create_model("modular_resnet20", num_classes=3)).__name__)
"""

FIRST_IMPORTS = [
    "import hf_modular",  # then transformers, by the check below
    "import transformers; import hf_modular",
    "import timm; import hf_modular",
    "import hf_modular.data",  # a module that loads transformers itself, half-way through its own import
    "from hf_modular.models import ModularResNetConfig",
    "import hf_modular; hf_modular.ComposedModel",
]

SUBPACKAGE_FIRST = """
import hf_modular.decompose.pipeline
import hf_modular
print(callable(hf_modular.decompose), hf_modular.decompose.__module__)
"""

FAILED_REGISTRATION = """
import sys, warnings
import hf_modular
sys.modules["hf_modular.compose"] = None  # registration cannot import it
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import transformers
print("could not register" in str(caught[-1].message), hf_modular._registered)
"""

CASES = {
    "no heavy library": NO_HEAVY_LIBRARY,
    "subpackage first": SUBPACKAGE_FIRST,
    "failed registration": FAILED_REGISTRATION,
    **{first: first + "\n" + REGISTERED for first in FIRST_IMPORTS},
}


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    """Each case's output, from its own fresh interpreter."""
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, code in CASES.items()
    }
    outputs = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, f"{name}:\n{stderr}"
            outputs[name] = stdout
    finally:  # a failure or a timeout leaves no interpreter running
        for process in processes.values():
            process.kill()
    return outputs


def test_the_package_and_the_command_list_load_no_heavy_library(fresh):
    output = fresh["no heavy library"]
    assert "loaded: []" in output
    assert "['--help'] 0 True False" in output  # the command list, with each command's line
    assert "['--version'] 0 False False" in output
    assert "['nonsense'] 2 False True" in output  # argparse's own error for an unknown command
    assert "[] 2 False False" in output  # a command is required


@pytest.mark.parametrize("first", FIRST_IMPORTS)
def test_the_classes_are_registered_whichever_is_imported_first(fresh, first):
    assert fresh[first].split() == [
        "ModularResNetForImageClassification",
        "ModularResNetBackbone",
        "ComposedConfig",
        "TimmModularResNet",
    ]


def test_public_names_are_the_objects_they_name():
    import hf_modular.decompose.pipeline  # noqa: F401  (the subpackage is named like the function)
    from hf_modular.compose import ComposedModel
    from hf_modular.decompose import decompose

    assert hf_modular.decompose is decompose and callable(hf_modular.decompose)
    assert hf_modular.ComposedModel is ComposedModel
    assert hf_modular.models.ModularResNetConfig is hf_modular.ModularResNetConfig
    assert set(hf_modular.__all__) <= set(dir(hf_modular))
    namespace: dict = {}
    exec("from hf_modular import *", namespace)
    assert namespace["decompose"] is decompose and namespace["hub"] is hf_modular.hub
    with pytest.raises(AttributeError, match="no attribute 'ModularResnet'"):
        hf_modular.ModularResnet  # noqa: B018


def test_no_global_option_takes_a_value():
    """The command line names its command by the first word that is no option, which needs this."""
    from hf_modular.cli import build_parser

    parser = build_parser("")
    global_options = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert global_options and all(action.nargs == 0 for action in global_options)


def test_the_function_keeps_its_name_when_the_subpackage_is_imported_first(fresh):
    assert fresh["subpackage first"].split() == ["True", "hf_modular.decompose.pipeline"]


def test_a_failed_registration_warns_and_leaves_transformers_importable(fresh):
    assert fresh["failed registration"].split() == ["True", "False"]
