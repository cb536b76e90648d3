"""atomic_directory: all-or-nothing directories that keep the files a save does not rewrite."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from hf_modular.saving import LOCK_NAME, _exchange, atomic_directory, locked_directory


def test_new_directory_appears_whole_with_normal_permissions(tmp_path):
    with atomic_directory(tmp_path / "model") as staging:
        (staging / "config.json").write_text("{}")
        assert not (tmp_path / "model").exists()  # nothing visible until the block succeeds
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "model").st_mode & 0o777 == 0o777 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_existing_directory_is_replaced_and_keeps_other_files(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    (target / "README.md").write_text("card")
    (target / "extra").mkdir()
    (target / "extra" / "notes.txt").write_text("kept")
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "new"
    assert (target / "README.md").read_text() == "card"
    assert (target / "extra" / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .partial or .old left


def test_failure_leaves_the_old_directory_untouched(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target) as staging:
        (staging / "config.json").write_text("half")
        raise RuntimeError("boom")
    assert (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"), atomic_directory(tmp_path / "file"):
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_directories_are_exchanged_in_one_step_on_linux(tmp_path):
    # The swap that makes a save all-or-nothing even under kill -9: no moment where `model` does not exist.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("old")
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "config.json").write_text("new")
    assert _exchange(tmp_path / "staging", tmp_path / "model")
    assert (tmp_path / "model" / "config.json").read_text() == "new"
    assert (tmp_path / "staging" / "config.json").read_text() == "old"
    assert not _exchange(tmp_path / "staging", tmp_path / "missing")  # a failure is reported, not raised


def test_a_save_killed_between_two_renames_is_put_back(tmp_path, caplog):
    # Where directories cannot be exchanged, a kill between the renames leaves the old files aside and nothing at
    # `model`: the next write to it puts them back, and so does the next decompose into the parent directory.
    retired = tmp_path / ".model.0123abcd.old"
    retired.mkdir()
    (retired / "config.json").write_text("old")
    (retired / "README.md").write_text("card")
    ours = logging.getLogger("hf_modular")  # a CLI test may have stopped it propagating to pytest's handler
    ours.addHandler(caplog.handler)
    try:
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "config.json").write_text("new")
    finally:
        ours.removeHandler(caplog.handler)
    assert (tmp_path / "model" / "config.json").read_text() == "new"
    assert (tmp_path / "model" / "README.md").read_text() == "card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert "interrupted save" in caplog.text

    modules = tmp_path / "modules"
    (modules / ".cat.89abcdef.old").mkdir(parents=True)
    (modules / ".cat.89abcdef.old" / "config.json").write_text("cat")
    (modules / ".dog.1a2b3c4d.partial").mkdir()
    with locked_directory(modules):
        assert (modules / "cat" / "config.json").read_text() == "cat"
    assert sorted(p.name for p in modules.iterdir()) == [LOCK_NAME, "cat"]
