"""Atomic file writes: write a temporary file next to the target, then rename it over it.

A reader sees the previous file or the complete new one, never a partial write; a failure (or
Ctrl-C) at any point leaves no temporary file and an existing target untouched. New files get
the usual permissions (``0o666`` minus the umask), as ``open`` gives them.
"""

import contextlib
import json
import os
import secrets
from typing import Any, Iterator

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path for ``path``; on success it is synced and renamed over ``path``.

    The temporary file is a hidden sibling ending in ``path``'s name, so its extension is the
    same (OpenCV and others pick the format by it). The caller creates it (e.g.
    ``cv2.imwrite(tmp, ...)``, ``zipfile.ZipFile(tmp, "x")``); if the block raises, it is removed.

    Args:
        path (str): destination file; its folder is created if missing.
    """
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.getpid()}.{secrets.token_hex(4)}.partial.{name}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[Any]:
    """``open(path, mode)`` through :func:`atomic_path`: yields the open temporary file.

    Args:
        path (str): destination file.
        mode (str): "w" (text) or "wb" (binary).
        **kwargs: further ``open`` arguments (e.g. ``encoding``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:  # "x": never reuse a file
            yield f
            f.flush()


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` (e.g. an encoded PNG) to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(obj: Any, path: str) -> None:
    """``json.dump(obj)`` to ``path`` atomically (``obj``: anything ``json.dump`` accepts)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` atomically."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
