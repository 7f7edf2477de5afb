"""detectron2's ``DetectionCheckpointer`` with atomic saves.

Checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same folder
and renamed into place, so a crash mid-save never leaves a truncated ``model_final.pth``.
"""

import logging
import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["EVACheckpointer", "atomic_torch_save", "atomic_write_text"]

logger = logging.getLogger(__name__)


def _atomic_write(path: str, write_fn, mode: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file + rename."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through a temporary file + rename."""
    _atomic_write(path, lambda f: f.write(text), "w")


class EVACheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``save`` is atomic (local paths)."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))
