"""Where every number came from: the stages found (Table 0), the reproducibility manifest (Tables 4a-e:
commit, identity, hardware and seed per stage; package versions; latency machines; dataset checksums;
the resolved config where it departs from the paper) and the analysis' own ``metrics.json`` summary.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..config import RunConfig, to_dict
from ..data.fetch import SPLIT_DIGESTS
from ..runs import stage_identity
from ..storage import load_json
from .artifacts import TRAINED, Artifacts
from .exhibit import Exhibit


def stage_status_table(art: Artifacts) -> Exhibit:
    """Which upstream stages this analysis found, and in what state."""
    rows = []
    for stage, s in art.stages.items():
        m = s.manifest or {}
        rows.append(
            {
                "stage": stage,
                "status": s.status,
                "finished": m.get("finished_at") or "",
                "seconds": art.stage_seconds(stage),
                "hardware": m.get("hardware", ""),
            }
        )
    cap = (
        f"Read from outputs/{art.cfg.profile}/<stage>/manifest.json (seconds: the stage's notebook in this pipeline "
        "run, pipeline.json, else its last run's manifest). Stages marked 'not run' or "
        "'incomplete' leave their rows below empty; 'other config' means the stage finished for a "
        "different resolved config (other overrides) than this analysis."
    )
    return Exhibit("Stages", "Stages found", cap, pd.DataFrame(rows), formats={"seconds": "{:.0f}"})


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_departures(cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Every dotted config key where ``cfg`` differs from the dataclass defaults (the paper's settings):
    key → (this run's value, the paper's); the profile's name aside."""
    here, paper = _flat(to_dict(cfg)), _flat(to_dict(RunConfig()))
    return {k: (v, paper.get(k)) for k, v in here.items() if v != paper.get(k) and k != "profile"}


def reproducibility(art: Artifacts) -> list[Exhibit]:
    """Provenance of every number: per-stage commit, identity, hardware and seed (4a); package versions (4b);
    machines that timed latency (4c); dataset checksums (4d); the resolved config where it departs from the
    paper (4e)."""
    return [*_stage_provenance(art), _machines(art), _dataset_exhibit(art), _departures(art)]


def _stage_provenance(art: Artifacts) -> list[Exhibit]:
    """Tables 4a (per stage) and 4b (package versions, and which stages ran with which)."""
    prof = f"outputs/{art.cfg.profile}"
    rows, versions = [], {}
    for stage, s in art.stages.items():
        m = s.manifest or {}
        git = m.get("git") or {}
        rows.append({"stage": stage, "status": s.status, "commit": (git.get("sha") or "")[:10],
                     "dirty": git.get("dirty"), "identity": m.get("identity", ""),
                     "expected": stage_identity(art.cfg, stage), "hardware": m.get("hardware", ""),
                     "device": m.get("device", ""), "seed": m.get("seed")})
        for pkg, v in (m.get("versions") or {}).items():
            versions.setdefault(pkg, {}).setdefault(str(v), []).append(stage)
    cap = (
        f"From {prof}/<stage>/manifest.json. 'identity': the hash of the config sections that can change the "
        "stage's outputs and of its upstream stages' identities; 'expected': what this analysis' config gives; "
        "a stage whose two differ ran with other settings. 'dirty': uncommitted changes in the checkout when "
        "the stage ran."
    )
    vrows = [{"package": p, "version": " / ".join(f"{v} ({', '.join(st)})" if len(by) > 1 else v
                                                  for v, st in by.items())} for p, by in versions.items()]
    return [
        Exhibit("Table 4a", "Provenance per stage", cap, pd.DataFrame(rows), formats={"seed": "{:.0f}"}),
        Exhibit("Table 4b", "Software", f"Package versions recorded in the manifests ({prof}/<stage>/"
                "manifest.json); a package listed with several versions changed between stages.",
                pd.DataFrame(vrows), missing="" if vrows else "no stage ran"),
    ]


def _machines(art: Artifacts) -> Exhibit:
    """Table 4c: the environment of every machine that wrote a latency record."""
    envs = []
    for path in sorted((art.cfg.output_dir / "latency").glob("*.json")):
        data = load_json(path)
        if "environment" in data and "hardware_tag" in data:
            e = data["environment"]
            envs.append({"hardware tag": data["hardware_tag"], "CPU": e.get("cpu_model"), "cores": e.get("cpu_count"),
                         "torch threads": e.get("torch_threads"), "GPU": e.get("gpu_name", ""),
                         "torch": e.get("torch_version"), "measured": e.get("measured_at", "")})
    return Exhibit("Table 4c", "Machines that timed latency",
                   f"The environment block of every outputs/{art.cfg.profile}/latency/<hardware tag>.json.",
                   pd.DataFrame(envs), missing="" if envs else "05_latency not run",
                   formats={"cores": "{:.0f}", "torch threads": "{:.0f}"})


def _departures(art: Artifacts) -> Exhibit:
    """Table 4e: the resolved config where it differs from the dataclass defaults (the paper's settings)."""
    shown = {
        k: [json.dumps(x) if isinstance(x, list) else x for x in vp]
        for k, vp in config_departures(art.cfg).items()
    }
    diff = [{"key": k, "this run": v, "paper default": p} for k, (v, p) in shown.items()]
    cap = (
        f"The resolved config of this analysis (profile '{art.cfg.profile}') where it differs from the dataclass "
        f"defaults, which are the paper's settings; every stage saved its full resolved config as "
        f"outputs/{art.cfg.profile}/<stage>/config.yaml."
    )
    return Exhibit("Table 4e", "Resolved config, departures from the paper", cap, pd.DataFrame(diff).astype(str),
                   missing="" if diff else "none")


def _dataset_exhibit(art: Artifacts) -> Exhibit:
    """Split sizes (00_data metrics) and checksums: recorded by 00_data (``stats.json`` ``checksums``) when
    present, else the digests ``make data`` pins and verifies (CamVid); synthetic scenes have no files."""
    s = art.stages["00_data"]
    dataset = art.cfg.data.dataset
    stats = s.read_json("stats.json") or {}
    images = (s.metrics or {}).get("images", {})
    recorded = stats.get("checksums") or {}
    rows = []
    for split in ("train", "val", "test"):
        if split in recorded:
            digest, source = recorded[split], "recorded by 00_data"
        elif dataset == "camvid":
            digest, source = SPLIT_DIGESTS[split], "pinned in data/fetch.py, verified by `make data`"
        elif dataset == "synthetic":
            digest, source = "", "generated from a fixed seed per split (no files)"
        else:
            digest, source = "", "not recorded"
        rows.append(
            {
                "dataset": dataset,
                "split": split,
                "images": images.get(split),
                "sha256": digest,
                "checksum source": source,
            }
        )
    cap = (
        f"Images per split from outputs/{art.cfg.profile}/00_data/metrics.json; sha256 over the sorted "
        "'<relative path> <file sha256>' lines of a split's images and labels (fasterseg_core.data.fetch)."
    )
    return Exhibit(
        "Table 4d",
        "Dataset",
        cap,
        pd.DataFrame(rows),
        formats={"images": "{:.0f}"},
        missing="" if s.ran else f"00_data {s.status}",
    )


def run_metrics(art: Artifacts, exhibits: list[Exhibit]) -> dict[str, Any]:
    """The analysis' ``metrics.json``: stage statuses, which exhibits have content, headline numbers."""
    out: dict[str, Any] = {
        "stages": {k: s.status for k, s in art.stages.items()},
        "exhibits": {e.label: ("missing: " + e.missing) if e.missing else "ok" for e in exhibits},
    }
    for stage in TRAINED:
        if (m := art.trained(stage)) is not None:
            out[stage] = {
                "seeds": m["seeds"],
                "best_val_miou": {s: p["best"]["val"]["miou"] for s, p in m["per_seed"].items()},
                "last_val_miou": {s: p["last"]["val"]["miou"] for s, p in m["per_seed"].items()},
                "epochs": m["epochs"],
            }
    out["latency_rows"] = len(art.latency)
    return out
