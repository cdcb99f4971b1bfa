"""Shared test helpers: the read-only reference data next to the checkout, and thread control."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# ../shared/reference beside the repository (CI and the project machines); tests skip cleanly without it.
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def load_reference(name: str) -> dict:
    """A JSON file of ../shared/reference, or skip the calling test when it is absent."""
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference data {path} not available")
    return json.loads(path.read_text())


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (small convolutions; keeps the 2-core CI machine responsive)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
