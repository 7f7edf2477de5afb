"""detectron2's ``DetectionCheckpointer`` with atomic saves and a loading report.

Checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same folder
and renamed into place, so a crash mid-save never leaves a truncated ``model_final.pth``.

After each load, :attr:`EVACheckpointer.last_load_report` says what was loaded and what was
skipped, by name: tensors whose shapes differ (e.g. 366 vs 81 class rows when fine-tuning
``eva_o365.pth`` on COCO), model tensors absent from the checkpoint (e.g. the mask head) and
checkpoint tensors the model does not use. A one-line summary is logged next to detectron2's
detailed messages, so partial loads are never silent.
"""

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["EVACheckpointer", "LoadReport", "atomic_torch_save", "atomic_write_text"]

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


@dataclass
class LoadReport:
    """What one ``load`` did to the model's state dict.

    Attributes:
        num_loaded (int): tensors copied from the checkpoint.
        incorrect_shapes (list): (name, shape in checkpoint, shape in model), not loaded.
        missing_keys (list[str]): model tensors the checkpoint does not have.
        unexpected_keys (list[str]): checkpoint tensors the model does not have.
    """

    num_loaded: int = 0
    incorrect_shapes: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.incorrect_shapes or self.missing_keys or self.unexpected_keys)

    def summary(self) -> str:
        parts = [f"loaded {self.num_loaded} tensors"]
        if self.incorrect_shapes:
            shapes = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.incorrect_shapes)
            parts.append(f"skipped {len(self.incorrect_shapes)} with other shapes ({shapes})")
        if self.missing_keys:
            parts.append(f"{len(self.missing_keys)} model tensors not in the checkpoint")
        if self.unexpected_keys:
            parts.append(f"{len(self.unexpected_keys)} checkpoint tensors unused")
        return "; ".join(parts)


class EVACheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save`` and a :class:`LoadReport` per load."""

    last_load_report = None

    def _load_model(self, checkpoint):
        num_in_checkpoint = len(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        report = LoadReport(
            incorrect_shapes=list(incompatible.incorrect_shapes),
            missing_keys=list(incompatible.missing_keys),
            unexpected_keys=list(incompatible.unexpected_keys),
        )
        report.num_loaded = (
            num_in_checkpoint - len(report.incorrect_shapes) - len(report.unexpected_keys)
        )
        self.last_load_report = report
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        super()._log_incompatible_keys(incompatible)
        report = self.last_load_report
        if report is not None and not report.complete:
            self.logger.warning("Partial checkpoint load: %s", report.summary())
        elif report is not None:
            self.logger.info("Checkpoint fully loaded: %s", report.summary())

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
