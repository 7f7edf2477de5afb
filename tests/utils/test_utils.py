"""Tests of eva_det.utils: atomic writes, config sections, category ids, DDP unwrapping."""

import os
import stat

import pytest
import torch
from detectron2.data import MetadataCatalog
from omegaconf import OmegaConf

from eva_det.errors import InputError
from eva_det.utils.atomic import (
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from eva_det.utils.categories import class_to_category_ids
from eva_det.utils.modules import unwrap_ddp
from eva_det.utils.sections import read_section


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "write",
    [
        lambda p: atomic_write_text("x", p),
        lambda p: atomic_write_bytes(b"x", p),
        lambda p: atomic_write_json({"x": 1}, p),
        lambda p: atomic_torch_save({"x": torch.ones(1)}, p),
    ],
)
def test_atomic_files_follow_the_umask(tmp_path, write):
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "a" / "file.bin")
        write(path)
        assert _mode(path) == 0o644  # what open() gives, not mkstemp's 0600
        os.umask(0o077)
        write(path)  # replacing: the new file's mode
        assert _mode(path) == 0o600
    finally:
        os.umask(old)
    assert os.listdir(tmp_path / "a") == ["file.bin"]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="encoder"):
        with atomic_path(str(path)) as tmp:
            assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("encoder failed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.png"]
    with atomic_path(str(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.png"]


def test_read_section_defaults_and_misspelled_keys():
    defaults = {"enabled": False, "sizes": [1, 2]}
    cfg = OmegaConf.create({"train": {"x": {"enabled": True}}, "n": 3})
    out = read_section(cfg, "train.x", defaults)
    assert out == {"enabled": True, "sizes": [1, 2]}
    out["sizes"].append(3)
    assert defaults["sizes"] == [1, 2]  # a copy
    assert read_section(cfg, "train.absent", defaults) == defaults
    assert read_section(OmegaConf.create({}), "test.amp", defaults) == defaults
    cfg = OmegaConf.create({"test": {"aug": {"enabld": True, "n": "${..m}"}, "m": 1}})
    with pytest.raises(InputError, match=r"Unknown test.aug keys \['enabld', 'n'\]; known"):
        read_section(cfg, "test.aug", defaults)


def test_class_to_category_ids():
    coco = MetadataCatalog.get("eva_det_test_utils_coco")
    coco.set(thing_dataset_id_to_contiguous_id={1: 0, 3: 1, 7: 2}, thing_classes=["a", "b", "c"])
    assert class_to_category_ids(coco) == {0: 1, 1: 3, 2: 7}
    lvis = MetadataCatalog.get("eva_det_test_utils_lvis")
    lvis.set(thing_classes=["a", "b"])
    assert class_to_category_ids(lvis) == {0: 1, 1: 2}
    assert class_to_category_ids(lvis, lvis_fallback=False) is None
    assert class_to_category_ids(MetadataCatalog.get("eva_det_test_utils_none")) is None
    bad = MetadataCatalog.get("eva_det_test_utils_bad")
    bad.set(thing_dataset_id_to_contiguous_id={1: 0, 2: 0})
    with pytest.raises(ValueError, match="must map onto 0..1"):
        class_to_category_ids(bad)


def test_unwrap_ddp_leaves_other_modules():
    model = torch.nn.Linear(2, 2)
    assert unwrap_ddp(model) is model
