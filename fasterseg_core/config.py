"""Typed, validated run configuration: YAML profile + dotted overrides → frozen dataclasses.

The dataclass defaults are the paper's settings; every default cites its section of ``docs/method.md``
(§3 the search, §9 training, §10 latency), the project's description of the method. A profile (``params/<name>.yaml``)
lists only what it changes. Everything is checked before any file is touched: an unknown key, a wrong
type or a value outside its range fails at once with one line naming the key, the value, the rule and a
valid example, so a misspelled papermill override fails in a notebook's first cell, not hours later.

Ranges live in the type annotations (``Annotated[int, AtLeast(1)]``), so validation, the YAML schema and
the widget form of ``notebooks/control.ipynb`` read the same rule.

    cfg = load_config("smoke", {"teacher.epochs": 2})
    cfg.teacher.lr            # 0.01
    dump_config(cfg, "outputs/smoke/config.yaml")
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .backend_table import BACKENDS
from .schema import AtLeast, ConfigError, Positive, Range, Sides, build

__all__ = [
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "LatencyConfig",
    "ModelConfig",
    "ReportConfig",
    "RunConfig",
    "SearchConfig",
    "TrainConfig",
    "dump_config",
    "from_dict",
    "load_config",
    "profile_path",
    "project_root",
    "to_dict",
]

Count = Annotated[int, AtLeast(1)]
NonNegative = Annotated[int, AtLeast(0)]
Fraction = Annotated[float, Range(0.0, 1.0)]
Rate = Annotated[float, Positive()]
Crop = Annotated[tuple[int, int], Sides(multiple=32, minimum=64)]  # what the networks' strides need
# Whole-image sizes (latency, the search's table) only need the stem's three stride-2 convolutions to
# divide them: CamVid's 360×480 is valid; later stages resize internally.
ImageSize = Annotated[tuple[int, int], Sides(multiple=8, minimum=64)]
Chi = Annotated[int, Range(1, 12)]  # a width in twelfths of the full width (§0 notation)
# A key of the latency backend table, so a misspelt backend fails at load_config, not in 05_latency after the
# study has trained. Only the name: a backend this machine cannot run is recorded as unavailable there.
BackendName = Literal[tuple(BACKENDS)]


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["cityscapes", "camvid", "synthetic"] = "cityscapes"  # paper: Cityscapes fine
    # Folder holding the dataset. Empty: $FASTERSEG_DATA/<dataset>, else <project>/data/<dataset>.
    root: str = ""
    # Resize factor applied to every image/label before augmentation. Paper training: 1.0 (§9.1);
    # the search pre-downsamples by 2 (§3.1, see SearchConfig.base_scale). CPU profiles use < 1.
    base_scale: Annotated[float, Range(0.0, 4.0, lo_open=True)] = 1.0
    scales: Annotated[tuple[Rate, ...], Range(1, None, length=True)] = (0.75, 1.0, 1.25)  # §9.1
    use_flip: bool = True  # §9.1 random horizontal flip, p = 0.5
    # Deviation, opt-in (not in §9.1): photometric jitter of the training images, brightness, contrast and
    # saturation each scaled by a random factor in [1 − s, 1 + s] (0 = none, the paper). For the shift from
    # CamVid's training sequences to its test sequences: test mIoU trails val by ~10 points in camvid-cpu.
    color_jitter: Annotated[float, Range(0.0, 1.0)] = 0.0
    num_workers: NonNegative = 6  # §9.1 (authors' loader)
    # Decode every image and label once per stage, before training, and keep them in memory (not in the
    # paper: a speed option; items are the same bit for bit, so it is not part of a stage's identity).
    # CamVid at any scale: < 0.5 GB; Cityscapes fine: ~25 GB, hence off by default.
    cache_decoded: bool = False
    # Score the training stages' checkpoints on the test split too (the study). False for choosing a recipe or
    # any other setting (benchmarks/recipe.py): such runs are scored on val only, so test is touched by the
    # study alone (not a paper setting; part of the identity, as the metrics differ).
    score_test: bool = True
    # 0 = every image of a split. A positive number keeps the first N (deterministic subsets for CPU runs).
    max_train_images: NonNegative = 0
    max_eval_images: NonNegative = 0
    # Synthetic street scenes (no download): images per split and their size (H, W).
    synthetic_train_images: Count = 64
    synthetic_eval_images: Count = 16
    synthetic_hw: Crop = (128, 256)


@dataclass(frozen=True)
class ModelConfig:
    num_layers: Annotated[int, AtLeast(3)] = 16  # §2.2, L = 16
    base_channels: Count = 12  # §0 notation, F = 12 ("Fch")
    width_choices_chi: Annotated[tuple[Chi, ...], Range(1, None, length=True)] = (4, 6, 8, 10, 12)  # §0
    teacher_stem_head_chi: tuple[Chi, Chi] = (12, 12)  # §5, teacher (1, 1)
    student_stem_head_chi: tuple[Chi, Chi] = (8, 8)  # §5, student (8/12, 8/12)
    # Where stage networks come from: "searched" needs the search stage's arch JSON; "published" uses the
    # authors' Fig. 6 networks shipped with the package; "auto" = searched when present, else published.
    arch_source: Literal["auto", "searched", "published"] = "auto"


@dataclass(frozen=True)
class SearchConfig:
    pretrain_epochs: NonNegative = 20  # §3.4
    search_epochs: Count = 30  # §3.4; the architecture is derived after each, so at least one
    pretrain_batch_size: Count = 3  # §3.4
    search_batch_size: Count = 2  # §3.4
    pretrain_crop_hw: Crop = (256, 512)  # §3.4, on the half-resolution images
    search_crop_hw: Crop = (224, 448)  # §3.4
    base_scale: Annotated[float, Range(0.0, 4.0, lo_open=True)] = 0.5  # §3.1, images downsampled by 2
    # Iterations per epoch; 0 = the authors' max(n_train // 2 // batch, min_iters_per_epoch).
    iters_per_epoch: NonNegative = 0
    min_iters_per_epoch: Count = 400  # §3.4
    pretrain_lr: Rate = 0.02  # §3.4
    search_lr: Rate = 0.01  # §3.4
    momentum: Fraction = 0.9  # §3.4
    weight_decay: Annotated[float, AtLeast(0.0)] = 5e-4  # §3.4
    lr_decay_per_epoch: Annotated[float, Range(0.0, 1.0, lo_open=True)] = 0.978  # §3.4 ExponentialLR
    grad_clip_norm: Rate = 5.0  # §3.4
    arch_lr: Rate = 3e-4  # §3.4 Adam
    arch_betas: tuple[Fraction, Fraction] = (0.5, 0.999)  # §3.4
    arch_weight_decay: Annotated[float, AtLeast(0.0)] = 0.0  # §3.4
    ohem_thresh: Fraction = 0.7  # §3.2
    # §3.3 (α, β, γ terms)
    latency_weights: tuple[float, float, float] = (1 / 500, 497 / 500, 2 / 500)
    latency_lambda_init: Annotated[float, AtLeast(0.0)] = 0.01  # §3.3
    # Target FPS window for the adaptive λ. Empty: the table FPS of the published student on this device's
    # lookup table ± target_window_rel (the paper's 155–175 FPS is ±6 % around its 1080 Ti figure).
    target_fps_window: tuple[Rate, ...] = ()
    target_window_rel: Annotated[float, Range(0.0, 1.0, lo_open=True, hi_open=True)] = 0.06
    # §3.3, the table's resolution. Not set in a profile: latency.input_hw, the resolution the networks are
    # timed at (from_dict fills it in), so the search steers by the latency 05_latency measures.
    latency_input_hw: ImageSize = (1024, 2048)
    # Reproduce the original code's quirks (§3.3 naming bug and β row, §4 cumulative re-softmax); false
    # uses the corrected computation.
    faithful_quirks: bool = True
    seed: int = 12345  # §3.4
    # Added by the search (issue 5). Val images evaluated after every search epoch; 0 = all of them (§3.5).
    eval_max_images: NonNegative = 0
    # A saved latency table to steer the search (ours, or the authors' export such as
    # ../shared/reference/fasterseg_latency_lookup_table.json; relative paths from the project folder).
    # Empty: build one for this device at latency_input_hw, cached under outputs/<profile>/latency/ (§3.3, §10).
    latency_table: str = ""
    # Deviation: multiply the latency term by 6.414 ms / (published student's latency on this table), so λ
    # weighs the same *relative* latency on every device and resolution; exactly 1 on the authors' table
    # (§3.3, §8). false: raw milliseconds, as the original.
    latency_normalize: bool = True
    # Deviation, opt-in: each training pass runs one operator per cell and one input per two-input cell,
    # sampled by straight-through Gumbel-softmax of α / β (single-path, as GDAS), instead of all five
    # operators and both inputs (§2.4); evaluation runs the most likely path. ~10x cheaper per iteration.
    path_sampling: bool = False
    # Deviation, opt-in: every pretraining iteration adds one pass of the student index at random widths to
    # the teacher's four (§3.2 pretrains index 0 only, so the student's stem and decoder first learn in the
    # search, and a short search scores its students with untrained heads). Issue 28's supernet study.
    pretrain_student: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """One training stage without a teacher (the teacher, or the scratch-trained student), §9."""

    epochs: Count = 600  # §9.2
    iters_per_epoch: Count = 1000  # §9.1 "epoch" = 1000 iterations
    batch_size: Count = 12  # §9.1
    crop_size_hw: Crop = (512, 1024)  # §9.1
    lr: Rate = 0.01  # §9.2
    momentum: Fraction = 0.9  # §9.2
    weight_decay: Annotated[float, AtLeast(0.0)] = 5e-4  # §9.2
    lr_decay_per_epoch: Annotated[float, Range(0.0, 1.0, lo_open=True)] = 0.992  # §9.2
    # The learning-rate schedule: "exponential" is the paper's (× lr_decay_per_epoch after every epoch, §9.2).
    # Deviation, opt-in: "poly" ((1 − t/T)^poly_power) or "cosine" over the run's T iterations, stepped every
    # iteration after warmup_iters of linear warmup: a schedule that anneals within a short run.
    lr_schedule: Literal["exponential", "poly", "cosine"] = "exponential"
    warmup_iters: NonNegative = 0
    poly_power: Rate = 0.9
    ohem_thresh: Fraction = 0.7  # §9.3
    aux_weight: Annotated[float, AtLeast(0.0)] = 0.2  # §9.3
    # Per-class weights of the segmentation loss, from the training split's pixel frequencies p_c
    # (losses.class_weights). "none" is §9.3 (every class weighs 1, as the paper trained Cityscapes; its CamVid
    # settings are undetermined, §13). Deviation, opt-in: "median_frequency" (median(p) / p_c, Eigen & Fergus
    # 2015, SegNet's CamVid recipe) or "enet" (1 / ln(1.02 + p_c), Paszke et al. 2016) lift rare classes.
    class_weighting: Literal["none", "median_frequency", "enet"] = "none"
    eval_every_epochs: Count = 10  # §9.2 (and after epoch 1)
    eval_flip: bool = False  # §9.4 paper-time setting uncertain; off as in the final code
    # Deviation: optional; the paper trained fp32. "auto" = bf16 where the device computes bf16 natively (CUDA
    # with bf16, a CPU with AVX512-BF16 or AMX), fp32 elsewhere (machine.resolve_amp): on an AVX2-only CPU
    # bf16 is emulated and trains 8-10x slower than fp32. A stage's identity and manifest hold the resolved one.
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"
    channels_last: bool = False
    sync_bn: bool = False
    # Deviation, opt-in: run the network's training forward and backward through torch.compile (inductor),
    # and a distillation teacher's forward too. Same recipe; a compile at the start of each run.
    compile: bool = False
    # Added (not in the paper): stop when an epoch's mean loss exceeds this multiple of the best epoch mean
    # so far (a finite blow-up, e.g. a learning rate far too high), as a NaN/inf loss always stops.
    divergence_factor: Annotated[float, Range(1.0, None, lo_open=True)] = 10.0


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """The distilled student (§9.3): the training recipe plus the distillation term and its teacher."""

    # KL(softmax(t) ‖ softmax(s)) at temperature T (the teacher's distribution is the reference, as the
    # authors compute it), weight 1, mean over all elements (§9.3).
    kd_weight: Annotated[float, AtLeast(0.0)] = 1.0
    kd_temperature: Rate = 1.0
    kd_reduction: Literal["mean", "batchmean"] = "mean"
    # Teacher weights. Empty: the teacher stage's best checkpoint of this run; else a path (relative to the
    # project folder), e.g. the authors' released weights0.pt.
    teacher_checkpoint: str = ""
    # With compile: the frozen teacher's forward compiled too (false: the teacher stays eager).
    compile_teacher: bool = True


@dataclass(frozen=True)
class LatencyConfig:
    input_hw: ImageSize = (1024, 2048)  # §10
    warmup_iters: NonNegative = 10  # §10
    min_loop_seconds: Rate = 1.0  # §10 calibration loop
    timed_seconds: Rate = 3.0  # §10: int(3 × FPS estimate) timed executions ≈ 3 s
    # Backends to time (fasterseg_core.backend_table.BACKENDS); unavailable ones are reported as such, never
    # replaced. The table's low-precision ones (bf16, fp16, int8) are checked against fp32.
    backends: tuple[BackendName, ...] = ("eager", "channels_last", "compile", "ort", "bf16", "ort_int8")
    num_threads: NonNegative = 0  # 0 = torch default
    include_peers: bool = True  # torchvision LRASPP / DeepLabV3 MobileNetV3 as yardsticks
    # Real validation images (resized to input_hw) for int8 calibration and low-precision agreement.
    agreement_images: Count = 8


@dataclass(frozen=True)
class ReportConfig:
    title: str = "FasterSeg, reproduced"
    show_code: bool = False


@dataclass(frozen=True)
class RunConfig:
    profile: str = "paper"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    output_root: str = "outputs"  # relative paths are taken from the project folder
    hardware_tag: str = ""  # empty: derived from the machine (e.g. "cpu-2core")
    # The training stages run once per seed, each into <stage>/seed-<s>/ (initial weights, data order and
    # augmentation all follow the seed, so the distilled and the scratch student of one seed are paired).
    # §9.2: the paper trained once, with seed 12345. Deviation when several are given: repeated runs.
    seeds: Annotated[tuple[int, ...], Range(1, None, length=True)] = (12345,)
    # One teacher for every seed (trained with the first seed; the distilled students of all seeds learn from
    # it) or one teacher per seed. The shared teacher costs one training instead of len(seeds).
    teacher_per_seed: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    teacher: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    student: TrainConfig = field(default_factory=TrainConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def output_dir(self) -> Path:
        """``<output_root>/<profile>``, where every stage of this run writes."""
        return resolve_path(self.output_root) / self.profile


# ---------------------------------------------------------------------------------------------------
# the project folder: profiles, notebooks, outputs, data


def project_root() -> Path:
    """The project folder (the one holding ``params/`` and ``notebooks/``).

    ``$FASTERSEG_ROOT`` when set; otherwise the nearest folder at or above the working directory that holds
    ``params/`` (notebooks run with ``notebooks/`` as their working directory, the Makefile and the command
    line from the project folder). Nothing is derived from where the package is installed.

    Raises:
        ConfigError: no such folder.
    """
    env = os.environ.get("FASTERSEG_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "notebooks").is_dir():
            return folder
    raise ConfigError(
        f"no project folder (one holding params/ and notebooks/) at or above {here}; run from the project "
        "folder or set FASTERSEG_ROOT=/path/to/the/project"
    )


def resolve_path(path: str | os.PathLike) -> Path:
    """An absolute path as is; a relative one taken from the project folder (profiles are written there)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


# ---------------------------------------------------------------------------------------------------
# loading


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; people write learning rates that way,
    so numbers in exponent form without a dot are floats here too, as in YAML 1.2."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column."""
    try:
        return yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{at}: YAML syntax error ({problem}); fix the file") from None


def profile_path(profile: str | os.PathLike) -> Path:
    """The YAML file of a profile name (``params/<name>.yaml`` of the project) or an explicit path."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"profile file {p} does not exist")
        return p
    folder = project_root() / "params"
    candidate = folder / f"{profile}.yaml"
    if not candidate.exists():
        have = sorted(x.stem for x in folder.glob("*.yaml"))
        raise ConfigError(f"no profile {str(profile)!r} in {folder}; available: {have}")
    return candidate


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def load_config(profile: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build the run configuration from a profile and dotted overrides.

    Args:
        profile: a profile name (``params/<name>.yaml``), a path to a YAML file, or ``None`` for the
            dataclass defaults alone (the paper's settings, profile name "paper").
        overrides: ``{"teacher.epochs": 2, "data.root": "/data/camvid"}``; applied after the profile.

    Returns:
        A frozen, validated :class:`RunConfig`. ``profile`` is set to the profile's name.

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value, broken YAML or missing profile; one line
            naming the key, the value, the rule and a valid example.
    """
    tree: dict[str, Any] = {}
    if profile is not None:
        path = profile_path(profile)
        tree = read_yaml(path) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree.setdefault("profile", path.stem)
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"overrides must be a mapping of dotted keys, got {overrides!r}")
    for k, v in (overrides or {}).items():
        _set_dotted(tree, str(k), v)
    return from_dict(tree)


def from_dict(tree: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from a nested dict (the inverse of :func:`to_dict`)."""
    search, latency = tree.get("search") or {}, tree.get("latency") or {}
    if isinstance(search, dict) and isinstance(latency, dict) and "input_hw" in latency:
        tree = {**tree, "search": {"latency_input_hw": latency["input_hw"], **search}}
    cfg = build(RunConfig, tree, "")
    check_rules(cfg)
    return cfg


def check_rules(cfg: RunConfig) -> None:
    """Rules between fields, after every field passed its own range (one error line each)."""
    sc, mc = cfg.search, cfg.model
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: {list(cfg.seeds)} must be distinct (a repeated seed repeats a run); e.g. [0, 1, 2]")
    if sc.target_fps_window and (len(sc.target_fps_window) != 2 or not 0 < sc.target_fps_window[0] <
                                 sc.target_fps_window[1]):
        raise ConfigError(
            f"search.target_fps_window: {list(sc.target_fps_window)} must be [low, high] FPS with "
            "0 < low < high, or [] for the default window; e.g. search.target_fps_window: [155, 175]"
        )
    if any(w < 0 for w in sc.latency_weights) or not math.isclose(sum(sc.latency_weights), 1.0, rel_tol=1e-6):
        raise ConfigError(
            f"search.latency_weights: {list(sc.latency_weights)} must be 3 non-negative weights summing to 1; "
            "e.g. the paper's [0.002, 0.994, 0.004]"
        )
    if not sc.latency_table and tuple(sc.latency_input_hw) != tuple(cfg.latency.input_hw):
        raise ConfigError(
            f"search.latency_input_hw: {list(sc.latency_input_hw)} differs from latency.input_hw "
            f"{list(cfg.latency.input_hw)}: the search would steer by latencies at another resolution than "
            "05_latency measures; leave search.latency_input_hw out (it follows latency.input_hw) or give "
            "search.latency_table"
        )
    for name in ("teacher", "distill", "student"):
        spec = getattr(cfg, name)
        if spec.warmup_iters >= spec.epochs * spec.iters_per_epoch:
            raise ConfigError(
                f"{name}.warmup_iters: {spec.warmup_iters} must be shorter than the run ({spec.epochs} epochs × "
                f"{spec.iters_per_epoch} iterations); e.g. {name}.warmup_iters: {spec.epochs * spec.iters_per_epoch // 20}"
            )
        if spec.warmup_iters and spec.lr_schedule == "exponential":
            raise ConfigError(f"{name}.warmup_iters: {spec.warmup_iters} needs a per-iteration schedule; set "
                              f"{name}.lr_schedule: poly or cosine, or warmup_iters: 0")
    chis = mc.width_choices_chi
    if list(chis) != sorted(set(chis)):
        raise ConfigError(
            f"model.width_choices_chi: {list(chis)} must be distinct and increasing; e.g. [4, 6, 8, 10, 12]"
        )
    for name in ("teacher_stem_head_chi", "student_stem_head_chi"):
        if not set(getattr(mc, name)) <= set(chis):
            raise ConfigError(
                f"model.{name}: {list(getattr(mc, name))} must be widths of model.width_choices_chi "
                f"{list(chis)}; e.g. [8, 8]"
            )


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config, suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved configuration as YAML (the provenance record saved with every run), atomically."""
    from .storage import save_text  # storage imports torch; config stays light for the tools that only read

    return save_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), path)

