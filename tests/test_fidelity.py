"""Behaviour is preserved: the smoke pipeline's results (every stage's metrics, histories, per-class IoU and
the derived architectures, timing fields aside) equal the stored fingerprint bit for bit.

The fingerprint (``tests/data/smoke_fingerprint.json``) was recorded before the layout refactor; a change
that alters results on purpose regenerates it (``python tests/fingerprint.py … --write``, see
``tests/fingerprint.py``) and says so in its commit message. Bit-identity holds for the machine kind and
torch build it was recorded with (CPU kernels differ between instruction sets), so a machine kind whose
rounding flips a near-tie in the search has a record of its own (``smoke_fingerprint_<kind>.json``, see
:func:`stored_fingerprint`); elsewhere the floats are
compared to 1e-3 relative (the search's per-epoch latencies to 5 %), everything else exactly, and the test says
which comparison it made.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fingerprint import differences, environment, fingerprint

DATA = Path(__file__).parent / "data"
EXPECTED = DATA / "smoke_fingerprint.json"  # recorded on an Intel Xeon (AVX-512, AMX) before the layout refactor
KEYS = ("torch", "cpu", "threads", "machine", "isa")


def stored_fingerprint(here: dict) -> tuple[dict, bool]:
    """The stored record to compare with, and whether it was recorded on this machine kind (bit for bit).

    The record of this machine kind if one is stored; else the one of this instruction set (compared with
    tolerances); else the Intel record (tolerances). Records without ``isa`` (the Intel one) match no ISA.
    """
    records = [json.loads(p.read_text()) for p in sorted(DATA.glob("smoke_fingerprint*.json"))]
    for record in records:
        if all(record["environment"].get(k) == here[k] for k in KEYS):
            return record, True
    same_isa = [r for r in records if r["environment"].get("isa") == here["isa"]]
    return (same_isa[0] if same_isa else json.loads(EXPECTED.read_text())), False


@pytest.mark.slow
def test_smoke_pipeline_reproduces_the_stored_fingerprint(smoke_pipeline):
    assert smoke_pipeline.returncode == 0, smoke_pipeline.stdout[-3000:] + smoke_pipeline.stderr[-3000:]
    if not smoke_pipeline.fingerprinted:
        pytest.skip("../shared/reference (the fixed latency table of the fingerprint run) is not available")
    here = environment()
    stored, same_machine = stored_fingerprint(here)
    # Another CPU rounds differently (measured 2026-12-02, AMD EPYC Zen 5 against the Intel Xeon that stored it):
    # metrics moved by at most 7e-5 relative, the derived architectures stayed the same, and one epoch's
    # near-tie in the search's derivation picked a path 2.3 % slower on the table. So: floats to 1e-3, the
    # search history's latency and FPS fields to 5 %, and keys, lengths, integers and architectures exactly;
    # a change of behaviour (a loss, a schedule, a seed) moves the metrics far more than 1e-3. An AVX2-only
    # AMD EPYC (2026-12-03) flipped a near-tie that changes the derived student (1155 differences), so that
    # kind has its own record, taken from commit 061f1c5 (after the refactor; it guards later changes there).
    rel, loose = (0.0, None) if same_machine else (1e-3, {"latency": 0.05, "_fps": 0.05})
    found = fingerprint(smoke_pipeline.profile_dir)
    diff = differences(stored["fingerprint"], found, rel=rel, loose=loose)
    mode = "bit for bit" if same_machine else f"to {rel} relative, {loose} ({here} vs {stored['environment']})"
    assert not diff, f"{len(diff)} differences from the stored fingerprint, compared {mode}:\n" + "\n".join(diff[:30])
