"""Shared pytest fixtures and settings for eva_det's CPU test suite."""

import os
import warnings

import pytest
import torch

# Keep the suite's thread use predictable on small CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO
