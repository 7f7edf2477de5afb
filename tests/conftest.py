"""Shared pytest fixtures and settings for eva_det's CPU test suite."""

import atexit
import os
import shutil
import tempfile
import warnings

import pytest
import torch

# Keep the suite's thread use predictable on small CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# No test may reach the Hugging Face hub: set before anything imports huggingface_hub (which
# reads these at import). Offline mode, an unreachable loopback endpoint, and a private empty
# cache that tests fill by hand (tests/helpers/hub_cache.py).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="eva_det_test_hf_home_")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def mini_shapes(tmp_path_factory):
    """Register a tiny shapes pair (12 train / 6 val images of 128 px) and generate it."""
    from eva_det.data.datasets.shapes import ensure_shapes, register_shapes

    root = str(tmp_path_factory.mktemp("shapes_mini"))
    names = {"shapes_mini_train": ("train", 12), "shapes_mini_val": ("val", 6)}
    register_shapes(root=root, splits=names, image_size=128)
    for name in names:
        ensure_shapes(name)
    return names
