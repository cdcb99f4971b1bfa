"""The latency stage's measurements: every network × every backend on this machine, in one record.

Used by ``notebooks/05_latency.ipynb`` through :func:`fasterseg_core.stages.run_latency`. One machine's
record goes to ``outputs/<profile>/latency/<hardware_tag>.json``; records of several machines (hardware
tags) accumulate side by side there, as the reproduction study's hardware A/B columns did, and
:func:`load_records` reads them all back into one table.

Per network (published teacher/student, the searched ones when ``01_search`` produced them, torchvision
peers): parameters and multiply-adds (authors' convention and conv MACs) at the run's size and at the
paper's 1024×2048, the §10 timing on every configured backend, the lookup-table estimate for the same
network at the same size (predicted vs measured), and for low-precision backends (``LOW_PRECISION``, from
the backend table) the argmax agreement with fp32 eager on real validation images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..backend_table import LOW_PRECISION
from ..models.architecture import Architecture
from ..models.network import build_network
from ..models.published import build_published, published_architecture
from ..progress import bar as progress_bar
from .agreement import agreement
from .backends import prepare
from .flops import count_complexity
from .lut import LatencyTable, build_lut, estimate_latency, network_entries
from .measure import environment_record, measure
from .peers import PEERS, build_peer

PAPER_HW = (1024, 2048)


@dataclass
class Candidate:
    """A network to time: its name, the module, and its architecture when it is a FasterSeg network."""

    name: str
    net: nn.Module
    arch: Architecture | None = None
    source: str = ""


def candidate_networks(
    num_classes: int, searched: dict[str, Path] | None = None, include_peers: bool = True
) -> list[Candidate]:
    """Published teacher/student, searched ones (``{"teacher": path, "student": path}``), peers."""
    out = []
    for role in ("student", "teacher"):
        out.append(
            Candidate(
                f"published {role}",
                build_published(role, num_classes=num_classes).eval(),
                published_architecture(role),
                "paper Fig. 6",
            )
        )
    for role, path in (searched or {}).items():
        arch = Architecture.from_json(path)
        out.append(
            Candidate(
                f"searched {role}", build_network(arch, num_classes=num_classes).eval(), arch, str(path)
            )
        )
    if include_peers:
        out += [Candidate(p, build_peer(p, num_classes), None, "torchvision, random weights") for p in PEERS]
    return out


@dataclass
class LatencyRecord:
    hardware_tag: str
    environment: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps(
                {"hardware_tag": self.hardware_tag, "environment": self.environment, "rows": self.rows},
                indent=1,
                default=str,
            )
        )
        tmp.replace(path)
        return path


def measure_suite(
    candidates: list[Candidate],
    backends: tuple[str, ...],
    input_hw: tuple[int, int],
    device: torch.device,
    hardware_tag: str,
    num_classes: int,
    *,
    images: list[torch.Tensor] | None = None,
    labels: list[torch.Tensor] | None = None,
    warmup: int = 10,
    min_loop_s: float = 1.0,
    timed_s: float = 3.0,
    num_threads: int = 0,
    progress: bool = True,
    table: LatencyTable | None = None,
) -> LatencyRecord:
    """Time every candidate on every backend and collect one record for this machine.

    Args:
        candidates: see :func:`candidate_networks`.
        backends: backend names (unavailable ones are recorded as such).
        input_hw: (H, W) of the timed input, batch 1.
        device: where to run.
        hardware_tag: this machine's name in reports.
        num_classes: classes the networks predict.
        images: real (1, 3, H, W) normalised images at ``input_hw`` for int8 calibration and agreement.
        labels: their (1, H, W) labels, for the mIoU change (meaningful once weights are trained).
        table: this device's eager table at ``input_hw`` from an earlier stage (01_search's), completed here and
            used for the table estimates, so a network has one table latency in the whole run; default: a
            table of just the entries the candidates use, timed here.
    """
    record = LatencyRecord(hardware_tag, environment_record(device))
    record.environment["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    calib = (images or [])[:4] or None
    jobs = [(c, b) for c in candidates for b in backends]
    bar = progress_bar(jobs, desc=f"latency {input_hw[0]}x{input_hw[1]} on {hardware_tag}", disable=not progress)
    complexity: dict[str, dict[str, float]] = {}
    references: dict[str, Any] = {}  # the fp32 eager reference of each network, built once for its agreements
    start = time.perf_counter()
    lut = _table_for(candidates, device, input_hw, hardware_tag, num_classes, table)
    record.environment["lut_build_s"] = round(time.perf_counter() - start, 3)
    record.environment["lut_source"] = "01_search's table, completed here" if table is not None else "timed here"
    for c, backend in bar:
        bar.set_postfix_str(f"{c.name} / {backend}")
        start = time.perf_counter()
        if c.name not in complexity:
            complexity[c.name] = _complexity(c.net, input_hw)
        complexity_s = time.perf_counter() - start
        check = backend in LOW_PRECISION and bool(images)
        r = measure(c.net, (1, 3, *input_hw), device, backend, name=c.name, warmup=warmup, min_loop_s=min_loop_s,
                    timed_s=timed_s, num_threads=num_threads, calibration_images=calib, keep=check)
        row: dict[str, Any] = {
            "hardware_tag": hardware_tag, "network": c.name, "source": c.source, "backend": backend,
            "status": r.status, "input_hw": f"{input_hw[0]}x{input_hw[1]}", "median_ms": r.median_ms,
            "mean_ms": r.mean_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "fps": r.fps,
            "iterations": r.iterations, "reason": r.reason, "dtype": r.record.get("dtype"),
            "backend_version": r.record.get("backend_version"), **complexity[c.name],
            "complexity_s": round(complexity_s, 3), "prepare_s": r.record.get("prepare_s"),
            "timing_s": r.record.get("timing_s"),
        }
        if lut is not None and c.arch is not None:
            row["lut_estimate_ms"] = estimate_latency(c.arch, lut, num_classes, faithful_quirks=False)
            row["lut_estimate_quirks_ms"] = estimate_latency(c.arch, lut, num_classes, faithful_quirks=True)
        if check and r.status == "ok":
            start = time.perf_counter()
            if c.name not in references:
                references[c.name] = prepare(c.net, images[0], "eager", device)
            agree = agreement(references[c.name], r.prepared, images, labels, num_classes=num_classes)
            row.update({f"agreement_{k}": v for k, v in agree.items()})
            row["agreement_s"] = round(time.perf_counter() - start, 3)
            r.prepared = None
        record.rows.append(row)
    return record


def _table_for(candidates: list[Candidate], device: torch.device, input_hw: tuple[int, int], hardware_tag: str,
               num_classes: int, table: LatencyTable | None = None) -> LatencyTable | None:
    """The entries the FasterSeg candidates use, timed on this device (eager): ``table``'s where it has them
    (the search's, so that the run quotes one table latency per network), the rest timed now."""
    archs = [c.arch for c in candidates if c.arch is not None]
    if not archs:
        return None
    keys = sorted({k for a in archs for f in (True, False)
                   for k in network_entries(a, input_hw, num_classes, faithful_quirks=f)})
    if table is not None and tuple(table.input_hw) != tuple(input_hw):
        table = None
    return build_lut(device, "eager", input_hw, hardware_tag, only=keys, progress=False, num_classes=num_classes,
                     resume_from=table)


def _complexity(net: nn.Module, input_hw: tuple[int, int]) -> dict[str, float]:
    """Parameters and multiply-adds at the timed size and at the paper's 1024×2048."""
    here = count_complexity(net, (1, 3, *input_hw))
    paper = count_complexity(net, (1, 3, *PAPER_HW))
    return {"params_M": here.params / 1e6, "params_used_M": here.params_used / 1e6,
            "thop_GMACs": here.thop_macs / 1e9, "conv_GMACs": here.conv_macs / 1e9,
            "thop_GMACs_1024x2048": paper.thop_macs / 1e9}


def real_images(
    dataset, input_hw: tuple[int, int], count: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``count`` evenly spaced (image, label) pairs of an eval dataset, resized to ``input_hw``.

    Images bilinear, labels nearest (255 stays ignore); (1, 3, H, W) float32 and (1, H, W) int64.
    """
    step = max(1, len(dataset) // max(1, count))
    imgs, labs = [], []
    for i in range(0, min(len(dataset), step * count), step):
        x, y = dataset[i]
        imgs.append(F.interpolate(x[None], size=input_hw, mode="bilinear", align_corners=False))
        labs.append(F.interpolate(y[None, None].float(), size=input_hw, mode="nearest")[0].long())
    return imgs, labs


def load_records(folder: Path) -> pd.DataFrame:
    """Every ``<hardware_tag>.json`` record in ``folder`` as one table (one row per network × backend)."""
    frames = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        if "rows" in data and "hardware_tag" in data:
            frames.append(pd.DataFrame(data["rows"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---- tables for the notebook and the report --------------------------------------------------------


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Network × backend: median ms, FPS, ratio to eager, params and GMACs (narrow enough for A4)."""
    df = frame.copy()
    eager = df[df.backend == "eager"].set_index(["hardware_tag", "network"]).median_ms
    df["x eager"] = [
        row.median_ms / eager.get((row.hardware_tag, row.network), float("nan"))
        if row.median_ms
        else float("nan")
        for row in df.itertuples()
    ]
    df["status"] = [s if s == "ok" else f"{s}: {r[:60]}" for s, r in zip(df.status, df.reason)]
    out = df.rename(
        columns={
            "median_ms": "ms",
            "fps": "FPS",
            "params_M": "params (M)",
            "thop_GMACs": "GMACs",
            "thop_GMACs_1024x2048": "GMACs @1024x2048",
        }
    )
    cols = ["network", "backend", "ms", "FPS", "x eager", "params (M)", "GMACs", "GMACs @1024x2048", "status"]
    return out[cols].round(2).set_index(["network", "backend"])


def lut_table(frame: pd.DataFrame, quirks: bool = True) -> pd.DataFrame:
    """Predicted (lookup-table sum) vs measured (eager median) latency per FasterSeg network. One table latency
    per network: the one the search charges (``quirks``: ``search.faithful_quirks``, the authors' naming bug that
    charges a zoomed cell twice; the record keeps both estimates)."""
    df = frame[(frame.backend == "eager") & frame.get("lut_estimate_ms", pd.Series(dtype=float)).notna()]
    if df.empty:
        return pd.DataFrame(columns=["network", "measured_ms", "table_ms", "measured / table"])
    out = pd.DataFrame(
        {
            "network": df.network,
            "hardware_tag": df.hardware_tag,
            "measured_ms": df.median_ms,
            "table_ms": df.lut_estimate_quirks_ms if quirks else df.lut_estimate_ms,
        }
    )
    out["measured / table"] = out.measured_ms / out.table_ms
    return out.round(3).set_index("network")


def low_precision_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Low-precision backends: speed-up over fp32 eager and argmax agreement with it."""
    df = frame[frame.backend.isin(LOW_PRECISION)].copy()
    if df.empty or "agreement_pixel_agreement" not in df:
        return pd.DataFrame(columns=["network", "backend", "status", "median_ms", "speedup", "agreement"])
    eager = frame[frame.backend == "eager"].set_index("network").median_ms
    df["speedup_vs_eager"] = [
        eager.get(n, float("nan")) / m if m else float("nan") for n, m in zip(df.network, df.median_ms)
    ]
    cols = [
        "network",
        "backend",
        "status",
        "median_ms",
        "speedup_vs_eager",
        "agreement_pixel_agreement",
        "agreement_logit_rel_error",
        "agreement_reference_classes",
    ]
    cols += [c for c in ("agreement_miou_reference", "agreement_miou_candidate") if c in df]
    short = {
        "median_ms": "ms",
        "speedup_vs_eager": "x faster",
        "agreement_pixel_agreement": "argmax agree",
        "agreement_logit_rel_error": "logit rel err",
        "agreement_reference_classes": "fp32 classes",
        "agreement_miou_reference": "mIoU fp32",
        "agreement_miou_candidate": "mIoU low",
    }
    return df[cols].rename(columns=short).round(4).set_index(["network", "backend"])


def fps_by_hardware(frame: pd.DataFrame) -> pd.DataFrame:
    """FPS of every network × backend (rows) on every hardware tag and size (columns)."""
    ok = frame[frame.status == "ok"]
    if ok.empty:
        return pd.DataFrame()
    return ok.pivot_table(
        index=["network", "backend"], columns=["hardware_tag", "input_hw"], values="fps", aggfunc="first"
    ).round(1)


def network_by_name(name: str, num_classes: int, deploy: bool = False) -> nn.Module:
    """A network from a command-line name: ``student``/``teacher`` (published, Fig. 6), a path to an
    architecture JSON written by the search, or a torchvision peer name (eval mode).

    Raises:
        ValueError: the name is none of these.
    """
    if name in ("student", "teacher"):
        return build_published(name, num_classes=num_classes, deploy=deploy).eval()
    if name in PEERS:
        return build_peer(name, num_classes)
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return build_network(Architecture.from_json(path), num_classes=num_classes, deploy=deploy).eval()
    raise ValueError(f"--arch {name!r}: expected student, teacher, an architecture .json file or one of {PEERS}")


def random_agreement(net: nn.Module, backend: str, size_hw: tuple[int, int], device: str, count: int) -> float:
    """Argmax agreement of ``backend`` with fp32 eager on ``count`` seeded random inputs (no dataset needed)."""
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, *size_hw, generator=gen) for _ in range(count)]
    ref = prepare(net, inputs[0], "eager", device)
    cand = prepare(net, inputs[0], backend, device, calibration_images=inputs[:2])
    return agreement(ref, cand, inputs)["pixel_agreement"]
