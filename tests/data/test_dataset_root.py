"""Generated (shapes) datasets work wherever DETECTRON2_DATASETS points.

A folder that does not exist yet is created on first use; a folder that cannot be written gives
one InputError naming it (exit code 2 through the CLI). Tests run as root, where permission bits
do not stop writes, so "unwritable" is a path below a regular file.
"""

import logging
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.tiny_cli import isolated_logging, one_thread, train_args

from eva_det.data.datasets.shapes import (
    default_shapes_root,
    ensure_shapes,
    generate_shapes,
    register_shapes,
)
from eva_det.engine.launch import run_cli
from eva_det.errors import InputError


@pytest.fixture
def shapes_under_env(monkeypatch):
    """register(env_value): shapes datasets registered under DETECTRON2_DATASETS=env_value."""
    names = []

    def _register(env_value):
        monkeypatch.setenv("DETECTRON2_DATASETS", str(env_value))
        splits = {"shapes_env_train": ("train", 4), "shapes_env_val": ("val", 2)}
        assert register_shapes(root=None, splits=splits, image_size=128) == list(splits)
        names.extend(splits)
        return default_shapes_root()

    with isolated_logging():
        yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cli_args(output_dir):
    return train_args(
        output_dir,
        [
            "dataloader.train.dataset.names=shapes_env_train",
            "dataloader.test.dataset.names=shapes_env_val",
            "train.max_iter=1",
        ],
    )


def test_fresh_folder_is_created_through_the_cli(tmp_path, repo_root, shapes_under_env):
    fresh = tmp_path / "not" / "there" / "yet"
    root = shapes_under_env(fresh)
    assert root == os.path.join(str(fresh), "shapes") and not fresh.exists()
    os.chdir(repo_root)
    with one_thread():
        run_cli(_cli_args(tmp_path / "out"))
    for split in ("train", "val"):
        assert os.path.isfile(os.path.join(root, "annotations", f"instances_{split}.json"))
    assert len(os.listdir(os.path.join(root, "val"))) == 2
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")


def test_unwritable_folder_gives_one_message(tmp_path, repo_root, shapes_under_env, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    root = shapes_under_env(blocker / "datasets")
    os.chdir(repo_root)
    with caplog.at_level(logging.ERROR, logger="eva_det"):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(_cli_args(tmp_path / "out"))
    assert exit_info.value.code == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None  # one message, no traceback
    message = errors[0].getMessage()
    assert f"generated on first use under {root}" in message
    assert f"{blocker} is a file, not a folder" in message
    assert "Set DETECTRON2_DATASETS to a folder you can write to" in message

    # the library path (no CLI checks) raises the same message
    with pytest.raises(InputError, match="is a file, not a folder"):
        ensure_shapes("shapes_env_val")
    with pytest.raises(InputError, match="is a file, not a folder"):
        DatasetCatalog.get("shapes_env_train")
    assert not (tmp_path / "out").exists()


def test_complete_split_is_read_without_writing(tmp_path):
    """A finished split is used as it is: no lock file, so a read-only copy works too."""
    json_path = generate_shapes(str(tmp_path), "val", num_images=2, image_size=32)
    lock = tmp_path / ".val.lock"
    assert lock.exists()
    lock.unlink()
    assert generate_shapes(str(tmp_path), "val", num_images=2, image_size=32) == json_path
    assert not lock.exists()
    with pytest.raises(ValueError, match="was generated with"):
        generate_shapes(str(tmp_path), "val", num_images=3, image_size=32)
