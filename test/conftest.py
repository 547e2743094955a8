"""Shared fixtures. Real reference data lives beside the repository in ../shared/data (never copied
into it, for licence reasons); tests that need it skip with that reason where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEBAL_SHARED_DATA", REPO.parent / "shared" / "data"))

# Two cores on CI: keep torch from oversubscribing them when pytest runs several heavy tests.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA} (set PEBAL_SHARED_DATA); "
                    "it is not redistributable and only present on the project's CI/dev machines")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
