"""Find eva_det's config tree (``configs/`` and ``projects/`` next to the package)."""

import os
from pathlib import Path

from detectron2.config import LazyConfig

__all__ = ["repo_root", "configs_root", "get_config"]


def repo_root() -> Path:
    """The checkout that holds ``eva_det/``, ``configs/`` and ``projects/`` (editable install)."""
    return Path(__file__).resolve().parents[2]


def configs_root() -> Path:
    return repo_root() / "configs"


def get_config(relpath: str):
    """Load a shared building block, e.g. ``get_config("common/train.py").train``.

    Args:
        relpath (str): path relative to ``configs/``; ``projects/...`` paths are resolved from the
            repository root instead.
    """
    root = repo_root() if relpath.startswith("projects/") else configs_root()
    path = root / relpath
    if not path.is_file():
        raise FileNotFoundError(
            f"eva_det config {relpath!r} not found at {path}. eva_det's configs ship with the "
            "source checkout: install it with `bash tools/install.sh` (pip install -e .)."
        )
    return LazyConfig.load(os.fspath(path))
