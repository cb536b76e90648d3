"""atomic_directory: all-or-nothing directories that keep the files a save does not rewrite."""

from __future__ import annotations

import os

import pytest

from hf_modular.saving import atomic_directory


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
