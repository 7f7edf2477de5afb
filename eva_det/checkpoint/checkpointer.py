"""detectron2's ``DetectionCheckpointer`` with atomic saves and a loading report.

Checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same folder
and renamed into place, so a crash mid-save never leaves a truncated ``model_final.pth``.

After each load, :attr:`EVACheckpointer.last_load_report` says what was loaded and what was
skipped, by name: tensors whose shapes differ (e.g. 366 vs 81 class rows when fine-tuning
``eva_o365.pth`` on COCO), model tensors absent from the checkpoint (e.g. the mask head) and
checkpoint tensors the model does not use. A one-line summary is logged next to detectron2's
detailed messages, so partial loads are never silent.

Checkpoint values may name weights on the Hugging Face hub (``hf://ORG/NAME/PATH``, timm names,
model-zoo names; :mod:`eva_det.checkpoint.hub`): :meth:`EVACheckpointer.load` downloads them into
the hub cache first, reads ``.safetensors`` files, and converts a pretrained backbone named that
way to the detector's layout (:func:`eva_det.checkpoint.convert.convert_for_model`).

Files are read with ``weights_only=True`` (:mod:`.safe_load`: tensors, containers and the few
types official EVA files pickle, allowed by name). Bad files give one clear
:class:`eva_det.errors.InputError` naming the file: a file that is not a readable ``torch.save``
file (truncated, text), that pickles other objects (a model class), or that holds something
other than a state dict (a list, a tensor). :meth:`EVACheckpointer.load_for_eval` and
:meth:`EVACheckpointer.resume_or_load` then check the fit (:mod:`.fit`): evaluation and
``--resume`` need every tensor, training from ``train.init_checkpoint`` the whole backbone.
``resume_or_load(..., resume=True)`` checks the
file ``last_checkpoint`` names and, if it is missing or unreadable, resumes from the newest
readable ``model_*.pth`` instead, with a warning naming both. ``save`` refuses to write model
weights that are NaN / inf (so a diverged run never overwrites a good checkpoint).
"""

import glob
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from eva_det.errors import InputError
from eva_det.utils.atomic import atomic_torch_save, atomic_write_text

from .convert import convert_for_model
from .fit import check_fit, module_groups
from .hub import resolve_weights
from .safe_load import UNSAFE_OPT_IN, load_checkpoint_file

__all__ = [
    "EVACheckpointer",
    "LoadReport",
    "checkpoint_options",
]

logger = logging.getLogger(__name__)


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
        """One line: counts, the other-shape tensors, the modules of absent / unused ones."""
        parts = [f"loaded {self.num_loaded} tensors"]
        if self.incorrect_shapes:
            shapes = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.incorrect_shapes)
            parts.append(f"skipped {len(self.incorrect_shapes)} with other shapes ({shapes})")
        if self.missing_keys:
            # detectron2 counts the other-shape tensors as missing too; name the really absent
            shape_keys = {k for k, _, _ in self.incorrect_shapes}
            absent = [k for k in self.missing_keys if k not in shape_keys]
            parts.append(
                f"{len(self.missing_keys)} model tensors not in the checkpoint"
                + (f" (absent from the file: {module_groups(absent)})" if absent else "")
            )
        if self.unexpected_keys:
            parts.append(
                f"{len(self.unexpected_keys)} checkpoint tensors unused "
                f"({module_groups(self.unexpected_keys)})"
            )
        return "; ".join(parts)


class EVACheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save``, safe loading, a :class:`LoadReport` and
    hub-named weights.

    ``load`` only reports; :meth:`load_for_eval` and :meth:`resume_or_load` also enforce the fit
    rules of :mod:`.fit` (evaluation: everything; training: the whole pretrained backbone).
    """

    last_load_report = None

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_mismatch: bool = False,
        unsafe_load_executes_code: bool = False,
        **checkpointables,
    ):
        """
        Args:
            model (nn.Module): the model to save / load.
            save_dir (str): folder of the training checkpoints and ``last_checkpoint``.
            allow_mismatch (bool): ``train.allow_checkpoint_mismatch``: turn the fit errors of
                :mod:`.fit` into warnings (evaluate / train a partly initialised model).
            unsafe_load_executes_code (bool): ``train.unsafe_load_executes_code``: load files
                that pickle other objects than tensors with ``weights_only=False``, running their
                code (see :mod:`.safe_load`).
            checkpointables: other objects with ``state_dict`` / ``load_state_dict``.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.allow_mismatch = allow_mismatch
        self.unsafe_load_executes_code = unsafe_load_executes_code
        self._hub_files = set()  # local files of hub-named weights (converted when pretrained)

    def load(self, path: str, *args, **kwargs):
        """detectron2's ``load``; ``path`` may also be a hub name (see the module docstring)."""
        weights = resolve_weights(path)
        if weights.hub is not None:
            self._hub_files.add(weights.path)
        return super().load(weights.path, *args, **kwargs)

    def load_for_eval(self, path: str, checkpointables=None) -> dict:
        """``load`` for evaluation: refuses a checkpoint that does not fit the model exactly.

        Raises:
            InputError: missing / unexpected tensors or other shapes (see :func:`.fit.check_fit`)
                unless ``allow_mismatch``.
        """
        extra = self.load(path, checkpointables)
        if path:
            check_fit(self.last_load_report, path, "eval", allow_mismatch=self.allow_mismatch)
        return extra

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
        _refuse_non_finite(data["model"], save_file)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def _load_file(self, filename: str):
        """detectron2's ``_load_file``; its ``.pkl`` branch (plain ``pickle.load``, which runs the
        file's code) only with ``unsafe_load_executes_code``."""
        if filename.endswith(".pkl") and not self.unsafe_load_executes_code:
            raise InputError(
                f"Checkpoint {filename}: detectron2 reads .pkl files (Caffe2 / Detectron model "
                "zoo) with pickle.load, which executes code from the file. eva_det's checkpoints "
                f"are .pth files; if you trust this one, add {UNSAFE_OPT_IN}."
            )
        return super()._load_file(filename)

    def _torch_load(self, f: str):
        """Load ``f`` safely (:func:`.safe_load.load_checkpoint_file`); check it is a state dict.

        ``.safetensors`` files are read with ``safetensors``; hub-named files holding a
        pretrained backbone are converted for ``self.model``.
        """
        if f.endswith(".safetensors"):
            loaded = _load_safetensors(f)
        else:
            loaded = load_checkpoint_file(
                f, unsafe_load_executes_code=self.unsafe_load_executes_code
            )
        if f in self._hub_files and isinstance(loaded, Mapping):
            loaded = convert_for_model(loaded, self.model, f)
        check_state_dict_file(loaded, f)
        return loaded

    def resume_or_load(self, path: str, *, resume: bool = True):
        """detectron2's ``resume_or_load``, resuming from the newest *readable* checkpoint."""
        if resume and self.has_checkpoint():
            newest = self.newest_complete_checkpoint()
            extra = self.load(newest)
            check_fit(self.last_load_report, newest, "resume", allow_mismatch=self.allow_mismatch)
            return extra
        extra = self.load(path, checkpointables=[])
        if path:
            check_fit(self.last_load_report, path, "train", allow_mismatch=self.allow_mismatch)
        return extra

    def newest_complete_checkpoint(self) -> str:
        """The file ``last_checkpoint`` names if readable, else the newest readable ``model_*.pth``.

        Raises:
            InputError: if no checkpoint in ``save_dir`` can be read.
        """
        tagged = self.get_checkpoint_file()
        problem = _unreadable(tagged, self.unsafe_load_executes_code)
        if problem is None:
            return tagged
        candidates = sorted(
            (p for p in glob.glob(os.path.join(self.save_dir, "model_*.pth")) if p != tagged),
            key=_checkpoint_order,
            reverse=True,
        )
        for candidate in candidates:
            if _unreadable(candidate, self.unsafe_load_executes_code) is None:
                logger.warning(
                    "The last checkpoint %s cannot be used (%s); resuming from %s, the newest "
                    "complete checkpoint, instead.",
                    tagged,
                    problem,
                    candidate,
                )
                return candidate
        raise InputError(
            f"Cannot resume: the last checkpoint {tagged} cannot be used ({problem}) and no other "
            f"readable model_*.pth is in {self.save_dir}. Start again without --resume "
            "(train.init_checkpoint) or restore a checkpoint into that folder."
        )


def checkpoint_options(cfg) -> dict:
    """:class:`EVACheckpointer` keyword arguments from ``cfg.train`` (False when absent):
    ``allow_mismatch`` = ``train.allow_checkpoint_mismatch``, ``unsafe_load_executes_code`` =
    ``train.unsafe_load_executes_code``."""
    train = cfg.train
    return {
        "allow_mismatch": bool(train.get("allow_checkpoint_mismatch", False)),
        "unsafe_load_executes_code": bool(train.get("unsafe_load_executes_code", False)),
    }


def _load_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise InputError(
            f"Checkpoint {path} is a .safetensors file: install safetensors (pip install "
            "safetensors; bash tools/install.sh does) to read it."
        ) from None
    return load_file(path, device="cpu")


def _unreadable(path: str, unsafe_load_executes_code: bool = False):
    """None if ``path`` is a readable training checkpoint (a dict with "model"), else why not."""
    if not path or not os.path.isfile(path):
        return "the file does not exist"
    try:  # mmap: tensors are mapped, not read, so this is cheap for zip-format files
        loaded = load_checkpoint_file(
            path, unsafe_load_executes_code=unsafe_load_executes_code, mmap=True
        )
    except InputError as e:
        return str(e).split(". ")[0]
    if not isinstance(loaded, Mapping) or "model" not in loaded:
        return "it holds no 'model' state dict"
    return None


def _checkpoint_order(path: str):
    """Sort key: model_final.pth after every model_<iteration>.pth, then by iteration, mtime."""
    name = os.path.basename(path)
    match = re.fullmatch(r"model_(\d+)\.pth", name)
    iteration = int(match.group(1)) if match else -1
    return (name == "model_final.pth", iteration, os.path.getmtime(path))


def check_state_dict_file(loaded, path: str) -> None:
    """Raise InputError unless ``loaded`` is a state dict or a dict with one under "model".

    Args:
        loaded: what ``torch.load(path)`` returned.
        path (str): the file, for the message.
    """
    fix = (
        "eva_det loads a dict of tensors (model.state_dict()) or a dict holding one under "
        "'model' (what training saves). Save model.state_dict() rather than the model or a "
        "list; official EVA pretrained files are converted with tools/convert_pretrained.py."
    )
    if not isinstance(loaded, Mapping):
        raise InputError(f"Checkpoint {path} holds a {type(loaded).__name__}, not a dict. {fix}")
    state = loaded["model"] if "model" in loaded else loaded
    if not isinstance(state, Mapping):
        raise InputError(
            f"Checkpoint {path}: its 'model' entry is a {type(state).__name__}, not a dict. {fix}"
        )
    bad = [
        (k, type(v).__name__)
        for k, v in state.items()
        if not (isinstance(k, str) and hasattr(v, "shape") and hasattr(v, "dtype"))
    ]
    if bad:
        where = "its 'model' entry" if state is not loaded else "it"
        raise InputError(
            f"Checkpoint {path}: {where} is not a state dict; {len(bad)} entries are not named "
            f"tensors, e.g. {bad[:3]}. {fix}"
        )


def _refuse_non_finite(state_dict, save_file: str) -> None:
    bad = [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise FloatingPointError(
            f"Refusing to save {save_file}: {len(bad)} model tensors hold NaN / inf (e.g. "
            f"{bad[:5]}). Training diverged; the checkpoint last_checkpoint names is intact: "
            "resume from it with --resume after enabling train.clip_grad.enabled=True or "
            "lowering optimizer.lr."
        )
