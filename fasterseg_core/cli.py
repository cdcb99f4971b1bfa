"""The command line: ``python -m fasterseg_core <command>``, every entry point in one place.

===============  ===============================================================================
command          what it does
===============  ===============================================================================
``report``       every stage notebook in order (complete ones skipped), then report.html + .pdf
``train``        the search or one training stage outside the notebooks; the ``torchrun`` entry point
``evaluate``     score a checkpoint (a stage's, or any file, the authors' included) on a split
``latency``      time networks on backends, or build a latency lookup table
``data``         put CamVid under a folder (link a local copy or download), checksums verified
``sweep``        the compute stages over seeds as submitit jobs (Slurm or local), with their dependencies
``tensorboard``  TensorBoard on a profile's output folder: the live curves of every stage and seed
``results``      newest benchmark record per benchmark and machine; the README's measured rows
===============  ===============================================================================

Every command that reads a profile takes the same ``--profile`` / ``--overrides`` pair. A user error (bad
override or JSON, missing input, wrong checkpoint, broken dataset) prints one ``error: …`` line naming the
problem and the fix and exits with status 2, without a traceback; ``--debug`` shows it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import load_checkpoint_model, load_stage_model
from .config import ConfigError, RunConfig, load_config
from .data import build_dataset
from .data.base import DatasetError
from .data.camvid import SPLIT_SIZES
from .data.fetch import FetchError, fetch_camvid
from .distributed import current_dist
from .engine import TrainingDiverged, evaluate
from .latency import BACKENDS, measure
from .latency.flops import count_complexity
from .latency.lut import LatencyTable, build_lut, estimate_latency
from .latency.suite import network_by_name, random_agreement
from .lifecycle import Run, RunLocked, start_run
from .machine import resolve_device, resolve_hardware_tag, seed_everything, stable_malloc_env
from .metrics import format_scores
from .models.published import published_architecture
from .pipeline import PipelineInterrupted, build_report, headline, pipeline_lock
from .predictions import export_cityscapes_submission, save_colour_predictions
from .records import (
    load_records,
    markdown_table,
    newest_per_benchmark_and_machine,
    readme_block,
    readme_rows,
    results_frame,
    text_table,
    update_readme,
)
from .report import ReportError
from .runs import TRAINING_STAGES, get_stage, is_complete, stage_dir, stage_seeds
from .stages import run_search, train_seeds
from .storage import ArtifactWriteError, save_json, save_text
from .sweep import DEFAULT_STAGES, EXECUTORS, Resources, prepare_sweep, run_sweep

# What a user can fix from the message alone: the message is the whole story (exit 2).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DatasetError, FileNotFoundError, ValueError,
                                                TypeError, PermissionError, ReportError, FetchError, RunLocked)
# A run that started and stopped for a stated reason (exit 1, no traceback).
RUN_FAILURES: tuple[type[BaseException], ...] = (TrainingDiverged, ArtifactWriteError)
# The commands that train or time networks run under glibc's pinned allocator settings (faster training
# steps, stable latencies; machine.STABLE_MALLOC); called from Python (tests) nothing re-executes.
PINNED_ALLOCATOR_COMMANDS = ("train", "evaluate", "latency", "sweep")


class UsageError(ValueError):
    """A command-line value that does not make sense (the message says what to pass instead)."""


def _overrides(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise UsageError(f"--overrides is not JSON ({e.msg} at column {e.colno}); e.g. '{{\"teacher.epochs\": 2}}'")
    if not isinstance(value, dict):
        raise UsageError(f"--overrides must be a JSON object of dotted keys, got {text!r}; e.g. '{{\"teacher.epochs\": 2}}'")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x2048 (HxW), got {text!r}") from None
    return h, w


def _config_args(default_profile: str | None = "camvid-cpu") -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--profile", default=default_profile, required=default_profile is None,
                        help=f"params/<profile>.yaml or a YAML path (default {default_profile})")
    parent.add_argument("--overrides", default="", help='JSON object of dotted keys, e.g. \'{"teacher.epochs": 2}\'')
    parent.add_argument("--hardware-tag", default="", help="name for this machine in latency results")
    return parent


# ---- commands ------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    """Every stage in order, then the report; exit 1 when a stage failed, 128 + the signal when stopped."""
    try:
        record = build_report(args.profile, _overrides(args.overrides), args.hardware_tag, args.force,
                              not args.no_pdf, args.notebooks)
    except PipelineInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum
    print(headline(record, load_config(args.profile, _overrides(args.overrides)).output_dir), flush=True)
    failed = [s["stage"] for s in record["stages"] if s["status"] == "failed"]
    if failed:
        print(f"error: stage {failed[0]} failed; see the report and pipeline.json", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One training stage, seed by seed (``--seed`` picks some); under ``torchrun`` every process runs this
    and rank 0 writes. Each seed trains into ``<stage>/seed-<s>/``; a seed already complete is skipped, unless
    ``--force``: its results are set aside (``previous/``) and it trains from scratch."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.profile, _overrides(args.overrides))
    stage = get_stage(args.stage)
    if stage.name == "01_search":
        return _train_search(cfg, args)
    seeds = stage_seeds(cfg, stage.name)
    unknown = sorted(set(args.seed or ()) - set(seeds))
    if unknown:
        raise UsageError(f"--seed {unknown}: {stage.name} runs the seeds {list(seeds)} of this profile; add them "
                         f"to the profile's seeds (--overrides '{{\"seeds\": [...]}}')")
    rank = int(os.environ.get("RANK", "0"))

    def start(seed: int) -> Run:
        return _rank_run(cfg, stage.name, args, seed, per_seed=True)

    train_seeds(cfg, stage.name, args.seed or seeds, start, fresh=args.force,
                progress=not args.no_progress and rank == 0)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _rank_run(cfg: RunConfig, stage: str, args: argparse.Namespace, seed: int, *, per_seed: bool) -> Run:
    """This process's run of ``stage``: rank 0 starts it (lock, manifest, every generator seeded); the other
    ranks of a ``torchrun`` write nothing and need only its folder, device and seed, seeded as ``start_run``
    seeds rank 0 (building the data may draw random numbers)."""
    if int(os.environ.get("RANK", "0")) == 0:
        return start_run(cfg, stage, hardware_tag=args.hardware_tag, seed=seed, per_seed=per_seed, fresh=args.force)
    seed_everything(seed)
    folder = stage_dir(cfg, stage, seed) if per_seed else stage_dir(cfg, stage)
    return Run(cfg, stage, folder, resolve_device(cfg.device), resolve_hardware_tag(cfg, args.hardware_tag),
               {"seed": seed}, seed=seed if per_seed else None)


@contextlib.contextmanager
def _failure_recorded(run: Run) -> Iterator[None]:
    """The manifest says why the run stopped (``failed`` with the error); the error itself goes on to main()."""
    try:
        yield
    except Exception as e:
        run.fail(f"{type(e).__name__}: {e}")
        raise


def _train_search(cfg: RunConfig, args: argparse.Namespace) -> int:
    """``01_search`` without its notebook (its figures are the notebook's): under ``torchrun`` every process
    searches on its share of each batch and rank 0 writes; a complete search is skipped."""
    if args.seed:
        raise UsageError(f"--seed is for the training stages; the search's seed is search.seed ({cfg.search.seed})")
    if not args.force and is_complete(cfg, "01_search", any_hardware=True):
        print("01_search: complete for this config, skipped (--force reruns it)")
        return 0
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    run = _rank_run(cfg, "01_search", args, cfg.search.seed, per_seed=False)
    with _failure_recorded(run):
        result = run_search(cfg, run, progress=not args.no_progress and rank == 0)
    if current_dist().main:
        run.finish(result.metrics)
        m = result.metrics["student"]
        print(f"01_search: student {m['latency_ms']:.2f} ms on the table, branches {m['lasts']}, λ "
              f"{result.metrics['lambda_final']:.3g} ({world} process{'es' if world > 1 else ''})")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a checkpoint on a split; optionally write JSON, colour PNGs or a Cityscapes submission."""
    cfg = load_config(args.profile, _overrides(args.overrides))
    device = resolve_device(args.device or cfg.device)
    if args.stage:
        net, info = load_stage_model(cfg, args.stage, args.which, device)
    else:
        net, info = load_checkpoint_model(args.checkpoint, args.arch, device=device)
    dataset = build_dataset(cfg.data, args.split, train=False)
    # Cityscapes test labels are not public (its gtFine/test files mark every pixel as ignored): scoring them
    # would only cost a full pass over 1525 images.
    unlabelled = cfg.data.dataset == "cityscapes" and args.split == "test"
    cm = None if unlabelled else evaluate(net, dataset, device, flip=args.flip, max_images=args.max_images,
                                          progress=True)
    label = info.get("stage", info["path"]) + (f" ({info['which']})" if "which" in info else "")
    evaluated = args.max_images if 0 < args.max_images < len(dataset) else len(dataset)
    print(f"{label} on {cfg.data.dataset} {args.split}: {len(dataset)} images"
          + (f", {evaluated} evaluated" if evaluated < len(dataset) else "") + (", flip" if args.flip else ""))
    recorded = info.get("metrics")
    if isinstance(recorded, dict) and isinstance(recorded.get("miou"), float):
        print(f"recorded at training time (val, epoch {info.get('epoch')}): mIoU {recorded['miou'] * 100:.2f} %")
    scores: dict[str, Any] = {}
    if cm is None:
        print("Cityscapes test labels are not public: no scores (use --submission for the evaluation server)")
    else:
        scores = cm.compute()
        if scores["pixels"] == 0:
            print("warning: no labelled pixels in the evaluated images; scores are NaN")
        print(format_scores(scores, cm.to_frame(dataset.class_names)))
    _evaluation_outputs(args, cfg, net, info, dataset, device, scores, 0 if cm is None else evaluated)
    return 0


def _evaluation_outputs(args: argparse.Namespace, cfg: Any, net: Any, info: dict[str, Any], dataset: Any,
                        device: Any, scores: dict[str, Any], evaluated: int) -> None:
    if args.json:
        save_json({"checkpoint": info["path"], "source": info["source"], "stage": info.get("stage"),
                   "which": info.get("which"), "epoch": info.get("epoch"), "profile": cfg.profile,
                   "dataset": cfg.data.dataset, "split": args.split, "flip": args.flip, "images": evaluated,
                   "class_names": list(dataset.class_names), **scores}, args.json)
        print(f"wrote {args.json}")
    if args.colour_dir:
        n = len(dataset)
        count = min(max(args.colour_count, 0), n)
        indices = [i * n // count for i in range(count)] if count else []
        paths = save_colour_predictions(net, dataset, indices, args.colour_dir, device, flip=args.flip)
        print(f"wrote {len(paths)} colour PNGs to {args.colour_dir}")
    if args.submission:
        zip_path = export_cityscapes_submission(net, dataset, args.submission.with_suffix(""), device,
                                                zip_path=args.submission, flip=args.flip)
        print(f"wrote {zip_path} ({len(dataset)} label-ID PNGs in {args.submission.with_suffix('')})")


def cmd_latency(args: argparse.Namespace) -> int:
    """Time networks on backends (§10 protocol), or build a latency lookup table."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.build_lut:
        lut = build_lut(device, (args.backend or ["eager"])[0], args.size, args.hardware_tag)
        out = args.json or Path(f"lut_{lut.hardware_tag}_{args.size[0]}x{args.size[1]}.json")
        lut.save(out)
        print(f"{len(lut.entries)} entries in {lut.record['build_seconds']} s → {out}")
        return 0
    backends = list(BACKENDS) if "all" in (args.backend or []) else (args.backend or ["eager"])
    lut = LatencyTable.load(args.lut) if args.lut else None
    results = []
    for name in args.arch or ["student"]:
        net = network_by_name(name, args.num_classes, args.deploy)
        cx = count_complexity(net, (1, 3, *args.size))
        for backend in backends:
            calib = [torch.randn(1, 3, *args.size, generator=torch.Generator().manual_seed(i)) for i in range(2)]
            r = measure(net, (1, 3, *args.size), device, backend, name=name, num_threads=args.threads,
                        timed_s=args.timed_seconds, calibration_images=calib)
            d = r.to_dict() | {"params": cx.params, "conv_macs": cx.conv_macs, "thop_macs": cx.thop_macs,
                               "hardware_tag": args.hardware_tag}
            if args.agreement and r.status == "ok" and backend != "eager":
                d["argmax_agreement"] = random_agreement(net, backend, args.size, device, args.agreement)
            if lut is not None and name in ("student", "teacher"):
                d["lut_estimate_ms"] = estimate_latency(published_architecture(name), lut)
            results.append(d)
            if args.json:  # written after every row, so a run stopped at a time limit keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))
            figure = f"{r.median_ms:8.2f} ms  {r.fps:7.1f} FPS" if r.status == "ok" else f"{r.status}: {r.reason}"
            if "argmax_agreement" in d:
                figure += f"  agreement {d['argmax_agreement']:.4f}"
            print(f"{name:30s} {backend:14s} {figure}  ({cx.params / 1e6:.2f} M params, "
                  f"{cx.thop_macs / 1e9:.2f} G MACs thop)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Put CamVid under ``--dest`` (link or copy a local copy, else download), verified."""
    source = args.source or (Path(os.environ["CAMVID_SOURCE"]) if os.environ.get("CAMVID_SOURCE") else None)
    dest = fetch_camvid(args.dest, source, copy=args.copy, verify=args.verify)
    how = f"from {source}" if source else "downloaded"
    print(f"CamVid ready in {dest} ({how}, {sum(SPLIT_SIZES.values())} image/label pairs, checksums verified)"
          if args.verify else f"CamVid in {dest} ({how}; not verified)")
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    """TensorBoard over the profile's output folder (each run folder's ``tensorboard/`` is one run there)."""
    logdir = load_config(args.profile, _overrides(args.overrides)).output_dir
    note = "" if logdir.is_dir() else " (nothing there yet: curves appear as stages start)"
    print(f"TensorBoard on http://{args.host}:{args.port}/ reading {logdir}{note}", flush=True)
    from tensorboard import default, program  # deferred: a few seconds to import, needed by this command only

    # in this process (not a child), so that stopping the command stops the server
    board = program.TensorBoard(plugins=default.get_plugins())
    board.configure(argv=[sys.argv[0], "--logdir", str(logdir), "--host", args.host,
                          "--port", str(args.port)])
    return board.main()


def cmd_results(args: argparse.Namespace) -> int:
    """The newest record per benchmark and machine as one table; or the README's measured rows from the records."""
    records = load_records(args.root)
    if args.readme is None:
        frame = results_frame(newest_per_benchmark_and_machine(records))
        print(markdown_table(frame) if args.markdown else text_table(frame))
        return 0
    text = args.readme.read_text()
    block = readme_block(records)
    if readme_rows(text) == block:
        print(f"{args.readme}: the measured rows match the records")
        return 0
    if args.check:
        print(f"error: {args.readme}: the measured rows differ from the records; rewrite them with "
              f"python -m fasterseg_core results --readme {args.readme}", file=sys.stderr)
        return 1
    save_text(update_readme(text, block), args.readme)
    print(f"{args.readme}: measured rows rewritten from the records")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Submit the sweep's jobs and wait for them; exit 1 naming each failed job and its log."""
    cfg = load_config(args.profile, _overrides(args.overrides))
    gpus = args.gpus_per_job if args.gpus_per_job is not None else (0 if cfg.device == "cpu" else 1)
    resources = Resources(partition=args.partition, gpus_per_job=gpus, time_min=args.time_min,
                          cpus_per_task=args.cpus_per_task,
                          slurm_parameters=_slurm_parameters(args.slurm_parameters))

    def plan() -> Any:
        return prepare_sweep(args.profile, _overrides(args.overrides), seeds=args.seeds, executor=args.executor,
                             stages=args.stages, resources=resources, folder=args.folder,
                             hardware_tag=args.hardware_tag, max_parallel=args.max_parallel)

    plan()  # bad settings fail here, before the lock (or anything else) is written
    with pipeline_lock(cfg, "sweep"):  # a report on the same outputs meanwhile would overwrite what jobs write
        sweep = plan()  # what is complete now that no report can change it
        if not sweep.jobs:
            print(f"sweep: nothing to run, every run is complete for this config ({', '.join(sweep.complete)})")
            return 0
        result = run_sweep(sweep, poll_s=args.poll_seconds)
    for job in result.failed:
        print(f"error: job {job.job.name} (job id {job.handle.job_id if job.handle else '?'}) failed: {job.error}; "
              f"log: {job.log}", file=sys.stderr)
    return 1 if result.failed else 0


def _slurm_parameters(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise UsageError(f"--slurm-parameters is not JSON ({e.msg} at column {e.colno}); "
                         "e.g. '{\"account\": \"proj\"}'")
    if not isinstance(value, dict):
        raise UsageError(f"--slurm-parameters must be a JSON object of sbatch options, got {text!r}; "
                         "e.g. '{\"account\": \"proj\"}'")
    return value


# ---- the parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """``python -m fasterseg_core`` with its subcommands."""
    # Over the ~80-line limit on purpose: a declarative table of every command and flag, read as --help reads.
    parser = argparse.ArgumentParser(prog="python -m fasterseg_core", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    cfg = _config_args()

    p = sub.add_parser("report", parents=[cfg], help="every stage, then report.html and report.pdf")
    p.add_argument("--force", action="store_true",
                   help="rerun every stage from scratch (old results, seeds included, are set aside to previous/)")
    p.add_argument("--no-pdf", action="store_true", help="render report.html only")
    p.add_argument("--notebooks", type=Path, default=None, help="folder of the stage notebooks (default notebooks/)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train", parents=[cfg], help="the search or one training stage (also under torchrun)")
    p.add_argument("--stage", required=True, choices=["01_search", *TRAINING_STAGES, "teacher", "distill", "student"])
    p.add_argument("--seed", type=int, action="append", help="train this seed only (repeatable; default: all)")
    p.add_argument("--force", action="store_true",
                   help="retrain complete seeds (their results are set aside to previous/, not deleted)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[_config_args(None)], help="score a checkpoint on a split")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--stage", help=f"a training stage of this profile: {', '.join(TRAINING_STAGES)}")
    src.add_argument("--checkpoint", type=Path, help="a checkpoint file: ours, or the authors' weights0/1.pt")
    p.add_argument("--which", choices=("best", "last"), default="best", help="with --stage (default: best)")
    p.add_argument("--arch", help="with --checkpoint: teacher | student | arch JSON (needed for the authors')")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--flip", action="store_true", help="add the horizontally flipped prediction (§9.4)")
    p.add_argument("--max-images", type=int, default=0, help="evaluate N evenly spaced images (0 = all)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 … (default: the profile's device)")
    p.add_argument("--json", type=Path, help="write scores, per-class IoU and provenance to this JSON file")
    p.add_argument("--colour-dir", type=Path, help="write image | ground truth | prediction PNGs here")
    p.add_argument("--colour-count", type=int, default=8, help="how many colour PNGs (evenly spaced)")
    p.add_argument("--submission", type=Path, help="Cityscapes: label-ID PNGs of the split beside it, zipped here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("latency", help="time networks on backends, or build a latency lookup table")
    p.add_argument("--arch", action="append", help="student | teacher | arch JSON | torchvision peer (repeatable)")
    p.add_argument("--size", type=_size, default=(1024, 2048), help="input HxW (default 1024x2048)")
    p.add_argument("--backend", action="append", help=f"one of {list(BACKENDS)} or 'all' (repeatable)")
    p.add_argument("--device", default="", help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=0, help="torch/ORT intra-op threads (0 = default)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--deploy", action="store_true", help="§10 TensorRT-friendly variant (nearest resizes)")
    p.add_argument("--hardware-tag", default="", help="name of this machine/runtime in reports")
    p.add_argument("--timed-seconds", type=float, default=3.0, help="length of the timed loop (§10: 3 s)")
    p.add_argument("--build-lut", action="store_true", help="build a latency lookup table instead of timing")
    p.add_argument("--lut", type=Path, help="a table to estimate the networks' latency with")
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also report argmax agreement of each backend with fp32 eager on N random inputs")
    p.add_argument("--json", type=Path, help="write results here")
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("data", help="put CamVid under a folder (make data)")
    p.add_argument("dataset", choices=["camvid"], help="only CamVid can be fetched (Cityscapes needs registration)")
    p.add_argument("--dest", type=Path, default=Path("data/camvid"), help="target folder (default data/camvid)")
    p.add_argument("--source", type=Path, help="local copy to link/copy (default $CAMVID_SOURCE)")
    p.add_argument("--copy", action="store_true", help="copy the files instead of linking the split folders")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the checksum check")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("tensorboard", help="TensorBoard on the profile's output folder (make tensorboard)")
    p.add_argument("--profile", default="camvid-cpu", help="params/<profile>.yaml or a YAML path")
    p.add_argument("--overrides", default="", help="JSON object of dotted keys, e.g. output_root")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=6006)
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("sweep", parents=[cfg], help="the compute stages over seeds as submitit jobs (Slurm, local)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of the training stages (default: the profile's)")
    p.add_argument("--executor", choices=EXECUTORS, required=True, help="slurm (sbatch) or local (this machine)")
    p.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), metavar="STAGE",
                   help=f"stages to run (default: {' '.join(DEFAULT_STAGES)}); each waits for what it reads")
    p.add_argument("--partition", default="", help="Slurm partition (required with --executor slurm)")
    p.add_argument("--gpus-per-job", type=int, default=None,
                   help="GPUs per job (default 1, 0 for a cpu profile); >1 trains under torchrun")
    p.add_argument("--time-min", type=int, default=24 * 60, help="time limit per job in minutes (default 1440)")
    p.add_argument("--cpus-per-task", type=int, default=0, help="CPU cores per job (default: the executor's)")
    p.add_argument("--slurm-parameters", default="", help='more sbatch options as JSON, e.g. \'{"account": "proj"}\'')
    p.add_argument("--folder", type=Path, default=None,
                   help="logs, job files and sweep.json (default <output_root>/<profile>/sweep/)")
    p.add_argument("--max-parallel", type=int, default=0, help="local: at most N jobs at once (default 0: no limit)")
    p.add_argument("--poll-seconds", type=float, default=None, help="seconds between looks (1 local, 30 Slurm)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("results", help="the newest benchmark record per benchmark and machine (make results)")
    p.add_argument("--root", type=Path, default=None, help="the records folder (default benchmarks/results)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--readme", type=Path, default=None,
                   help="rewrite this README's measured rows (between its results markers) from the records")
    p.add_argument("--check", action="store_true", help="with --readme: change nothing; exit 1 when they differ")
    p.set_defaults(func=cmd_results)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print ``error: …`` and return 2 (``--debug``: the traceback)."""
    args = build_parser().parse_args(argv)
    if argv is None and args.command in PINNED_ALLOCATOR_COMMANDS:
        stable_malloc_env()  # a real command line: re-run once under the pinned allocator (machine.py)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RUN_FAILURES as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - anything else is a bug or a broken environment: say where to look
        if args.debug:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
