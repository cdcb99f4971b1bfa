"""Shared test helpers: the read-only reference data next to the checkout, thread control, and one smoke
pipeline run shared by the slow tests that read its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared/reference beside the repository (CI and the project machines); tests skip cleanly without it.
REFERENCE = REPO.parent / "shared" / "reference"


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


@dataclass
class SmokePipeline:
    """One ``python -m fasterseg_core report --profile smoke`` run shared by the slow tests that read it."""

    output_root: Path
    overrides: dict
    returncode: int
    stdout: str
    stderr: str
    fingerprinted: bool  # ran with the fixed latency table, so its results can be compared bit for bit

    @property
    def profile_dir(self) -> Path:
        return self.output_root / "smoke"


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> SmokePipeline:
    """The smoke pipeline through the command line, as ``make report PROFILE=smoke`` runs it.

    With ``../shared`` present the search steers by the authors' published latency table (a table timed
    here would differ between runs), so ``test_fidelity`` can compare the results with the stored
    fingerprint; without it the search times a table on this machine as a user's run does.
    """
    from fingerprint import FIDELITY_OVERRIDES

    out = tmp_path_factory.mktemp("smoke-pipeline")
    fingerprinted = (REFERENCE / "fasterseg_latency_lookup_table.json").exists()
    overrides = {"output_root": str(out), **(FIDELITY_OVERRIDES if fingerprinted else {})}
    cmd = [sys.executable, "-m", "fasterseg_core", "report", "--profile", "smoke", "--overrides",
           json.dumps(overrides)]
    done = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True)
    return SmokePipeline(out, overrides, done.returncode, done.stdout, done.stderr, fingerprinted)
