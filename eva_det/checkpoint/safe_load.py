"""Loading checkpoint files without running their pickled code.

Every checkpoint eva_det reads (``train.init_checkpoint``, ``--resume``, conversion, demo, model
zoo) goes through :func:`load_checkpoint_file`: ``torch.load(weights_only=True)``, which builds
only tensors and plain containers, plus the few other types official EVA / EVA-02 files pickle
next to their weights, allowed by name (:data:`SAFE_GLOBALS`):

* ``argparse.Namespace``: the training arguments (``"args"``) of the MIM pretraining scripts;
* numpy scalars, arrays and dtypes (``"epoch"``, metrics, ``np.float64`` learning rates), under
  both the numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) names they are pickled with.

``collections.OrderedDict`` and the builtin containers are allowed by torch itself. Anything
else (a pickled model class, a function) is refused with an :class:`~eva_det.errors.InputError`
that names the type, unless the caller passes ``unsafe_load_executes_code=True``, which loads
with ``weights_only=False``: that runs whatever code the file pickles, so it is only for files
from a trusted source (the CLI spelling is ``--unsafe-load-executes-code`` in
``tools/convert_pretrained.py``, ``train.unsafe_load_executes_code=True`` in configs).
"""

import argparse
import logging
import pickle
import re
from typing import Any, List

import numpy as np
import torch

from eva_det.errors import InputError

__all__ = ["SAFE_GLOBALS", "UNSAFE_OPT_IN", "load_checkpoint_file"]

logger = logging.getLogger(__name__)

#: How the opt-in is spelled in configs and in tools/convert_pretrained.py.
UNSAFE_OPT_IN = "train.unsafe_load_executes_code=True (tools/convert_pretrained.py: " + (
    "--unsafe-load-executes-code)"
)


def _numpy_globals() -> List[Any]:
    """numpy's pickle entry points, each under its numpy 1 and numpy 2 module name."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    entries: List[Any] = [np.ndarray, np.dtype]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            entries.append((fn, f"{module}.{fn.__name__}"))
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles some dtypes by class
    if dtypes is not None:
        entries += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return entries


#: Types official EVA / EVA-02 checkpoints pickle besides tensors (see the module docstring).
SAFE_GLOBALS: List[Any] = [argparse.Namespace] + _numpy_globals()


def _refused_globals(path: str, error: Exception) -> List[str]:
    """Names of the types ``path`` pickles that :data:`SAFE_GLOBALS` does not allow."""
    allowed = set()
    for entry in SAFE_GLOBALS:
        if isinstance(entry, tuple):
            allowed.add(entry[1])
        else:
            allowed.add(f"{entry.__module__}.{entry.__qualname__}")
    try:  # reads the pickle's opcodes, runs nothing; zip-format files only
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))[:1]
    return [n for n in names if n not in allowed]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def load_checkpoint_file(path: str, *, unsafe_load_executes_code: bool = False, mmap=False):
    """``torch.load(path)`` on the CPU with ``weights_only=True`` and :data:`SAFE_GLOBALS`.

    Args:
        path (str): local file.
        unsafe_load_executes_code (bool): load with ``weights_only=False`` instead, which runs
            the code the file pickles (only for trusted files); logged as a warning.
        mmap (bool): map tensors instead of reading them (zip-format files).

    Returns:
        what the file holds.

    Raises:
        InputError: the file pickles a type outside :data:`SAFE_GLOBALS` (the message names it
            and the opt-in), or it is not a readable ``torch.save`` file (truncated, text, ...).
    """
    try:
        if unsafe_load_executes_code:
            logger.warning(
                "Loading %s with weights_only=False (unsafe_load_executes_code): this runs the "
                "code the file pickles; only do this for files from a trusted source.",
                path,
            )
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        refused = _refused_globals(path, e)
        if not refused:  # the weights-only unpickler also rejects malformed pickles
            raise _unreadable_error(path, e) from None
        raise InputError(
            f"Checkpoint {path} pickles Python objects that eva_det does not load safely: "
            f"{', '.join(refused[:5])}"
            + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
            + ". Loading them would execute code from the file. Save model.state_dict() (a dict "
            "of tensors) instead of a model or other objects; if you trust the file, load it "
            f"once with {UNSAFE_OPT_IN}, which executes its pickled code."
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, AttributeError) as e:
        raise _unreadable_error(path, e) from None


def _unreadable_error(path: str, error: BaseException) -> InputError:
    return InputError(
        f"Cannot read checkpoint {path}: {_first_line(error)}. The file is truncated or not a "
        "torch.save file (e.g. a text or HTML page saved instead of the download): copy / "
        "download it again (an interrupted training run leaves its previous checkpoints "
        "intact; resume from one of them)."
    )
