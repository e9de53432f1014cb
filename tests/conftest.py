"""Shared pytest fixtures: paths to the bundled sample and to ../shared/data (optional)."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "quickdraw_sample"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    """The bundled raw Quick Draw sample (10 categories, 263 drawings, CC BY 4.0)."""
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` beside the checkout; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (only the developers' checkouts have ../shared)")
    return SHARED_DATA
