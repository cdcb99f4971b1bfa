"""Typed, validated run configuration: YAML profile + dotted overrides → frozen dataclasses.

The dataclass defaults are the paper's settings (``shared/spec/fasterseg.md`` §3 for the search, §9 for
training, §10 for latency); every default cites its source. A profile (``params/<name>.yaml``) only lists
what it changes. An unknown key or a value of the wrong type fails at once, naming the valid keys, so a
misspelled papermill override fails in a notebook's first cell rather than hours later.

    cfg = load_config("smoke", {"teacher.epochs": 2})
    cfg.teacher.lr            # 0.01
    dump_config(cfg, "outputs/smoke/config.yaml")
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# Where profiles live: `params/` next to the package (editable install / source checkout), or the
# folder named by FASTERSEG_PARAMS_DIR (for an installed package with profiles elsewhere).
_REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A profile or override that does not fit the typed configuration."""


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["cityscapes", "camvid", "synthetic"] = "cityscapes"  # paper: Cityscapes fine
    # Folder holding the dataset. Empty: $FASTERSEG_DATA/<dataset>, else <repo>/data/<dataset>.
    root: str = ""
    # Resize factor applied to every image/label before augmentation. Paper training: 1.0 (§9.1);
    # the search pre-downsamples by 2 (§3.1, see SearchConfig.base_scale). CPU profiles use < 1.
    base_scale: float = 1.0
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)  # §9.1 discrete random scale
    use_flip: bool = True  # §9.1 random horizontal flip, p = 0.5
    num_workers: int = 6  # §9.1 (authors' loader)
    # 0 = every image of a split. A positive number keeps the first N (deterministic subsets for CPU runs).
    max_train_images: int = 0
    max_eval_images: int = 0
    # Synthetic street scenes (no download): images per split and their size (H, W).
    synthetic_train_images: int = 64
    synthetic_eval_images: int = 16
    synthetic_hw: tuple[int, int] = (128, 256)


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int = 16  # §2.2, L = 16
    base_channels: int = 12  # §0 notation, F = 12 ("Fch")
    width_choices_chi: tuple[int, ...] = (4, 6, 8, 10, 12)  # §0, W = [4/12 … 12/12]
    teacher_stem_head_chi: tuple[int, int] = (12, 12)  # §5, teacher (1, 1)
    student_stem_head_chi: tuple[int, int] = (8, 8)  # §5, student (8/12, 8/12)
    # Where stage networks come from: "searched" needs the search stage's arch JSON; "published" uses the
    # authors' Fig. 6 networks shipped with the package; "auto" = searched when present, else published.
    arch_source: Literal["auto", "searched", "published"] = "auto"


@dataclass(frozen=True)
class SearchConfig:
    pretrain_epochs: int = 20  # §3.4
    search_epochs: int = 30  # §3.4
    pretrain_batch_size: int = 3  # §3.4
    search_batch_size: int = 2  # §3.4
    pretrain_crop_hw: tuple[int, int] = (256, 512)  # §3.4, on the half-resolution images
    search_crop_hw: tuple[int, int] = (224, 448)  # §3.4
    base_scale: float = 0.5  # §3.1, images downsampled by 2 before augmentation
    # Iterations per epoch; 0 = the authors' max(n_train // 2 // batch, min_iters_per_epoch).
    iters_per_epoch: int = 0
    min_iters_per_epoch: int = 400  # §3.4
    pretrain_lr: float = 0.02  # §3.4
    search_lr: float = 0.01  # §3.4
    momentum: float = 0.9  # §3.4
    weight_decay: float = 5e-4  # §3.4
    lr_decay_per_epoch: float = 0.978  # §3.4 ExponentialLR
    grad_clip_norm: float = 5.0  # §3.4
    arch_lr: float = 3e-4  # §3.4 Adam
    arch_betas: tuple[float, float] = (0.5, 0.999)  # §3.4
    arch_weight_decay: float = 0.0  # §3.4
    ohem_thresh: float = 0.7  # §3.2
    latency_weights: tuple[float, float, float] = (1 / 500, 497 / 500, 2 / 500)  # §3.3 (α, β, γ terms)
    latency_lambda_init: float = 0.01  # §3.3
    # Target FPS window for the adaptive λ. Empty: the table FPS of the published student on this device's
    # lookup table ± target_window_rel (the paper's 155–175 FPS is ±6 % around its 1080 Ti figure).
    target_fps_window: tuple[float, ...] = ()
    target_window_rel: float = 0.06
    latency_input_hw: tuple[int, int] = (1024, 2048)  # §3.3, the table's resolution
    # Reproduce the original code's quirks (§3.3 naming bug and β row, §4 cumulative re-softmax); false
    # uses the corrected computation.
    faithful_quirks: bool = True
    seed: int = 12345  # §3.4
    # Added by the search (issue 5). Val images evaluated after every search epoch; 0 = all of them (§3.5).
    eval_max_images: int = 0
    # A saved latency table to steer the search (ours, or the authors' export such as
    # ../shared/reference/fasterseg_latency_lookup_table.json; relative paths from the repository root).
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


@dataclass(frozen=True)
class TrainConfig:
    """One training stage (teacher, distilled student or scratch student), §9."""

    epochs: int = 600  # §9.2
    iters_per_epoch: int = 1000  # §9.1 "epoch" = 1000 iterations
    batch_size: int = 12  # §9.1
    crop_size_hw: tuple[int, int] = (512, 1024)  # §9.1
    lr: float = 0.01  # §9.2
    momentum: float = 0.9  # §9.2
    weight_decay: float = 5e-4  # §9.2
    lr_decay_per_epoch: float = 0.992  # §9.2
    ohem_thresh: float = 0.7  # §9.3
    aux_weight: float = 0.2  # §9.3
    eval_every_epochs: int = 10  # §9.2 (and after epoch 1)
    eval_flip: bool = False  # §9.4 paper-time setting uncertain; off as in the final code
    seed: int = 12345  # §9.2
    amp: Literal["none", "bf16", "fp16"] = "none"  # deviation: optional; the paper trained fp32
    channels_last: bool = False
    sync_bn: bool = False
    # Distillation only (§9.3): KL(softmax(s) ‖ softmax(t)), temperature 1, weight 1, mean over all elements.
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    kd_reduction: Literal["mean", "batchmean"] = "mean"
    # Distillation only: teacher weights. Empty: the teacher stage's best checkpoint of this run; else a
    # path, e.g. the authors' released weights0.pt.
    teacher_checkpoint: str = ""


@dataclass(frozen=True)
class LatencyConfig:
    input_hw: tuple[int, int] = (1024, 2048)  # §10
    warmup_iters: int = 10  # §10
    min_loop_seconds: float = 1.0  # §10 calibration loop
    timed_seconds: float = 3.0  # §10: int(3 × FPS estimate) timed executions ≈ 3 s
    # Backends to time (fasterseg_core.latency.BACKENDS); unavailable ones are reported as such, never
    # replaced. bf16/fp16/ort_int8 are the low-precision deployment paths, checked against fp32.
    backends: tuple[str, ...] = ("eager", "channels_last", "compile", "ort", "bf16", "ort_int8")
    num_threads: int = 0  # 0 = torch default
    include_peers: bool = True  # torchvision LRASPP / DeepLabV3 MobileNetV3 as yardsticks
    # Real validation images (resized to input_hw) for int8 calibration and low-precision agreement.
    agreement_images: int = 8


@dataclass(frozen=True)
class ReportConfig:
    title: str = "FasterSeg, reproduced"
    show_code: bool = False


@dataclass(frozen=True)
class RunConfig:
    profile: str = "paper"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    output_root: str = "outputs"  # relative paths are taken from the repository root
    hardware_tag: str = ""  # empty: derived from the machine (e.g. "cpu-2core")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    teacher: TrainConfig = field(default_factory=TrainConfig)
    distill: TrainConfig = field(default_factory=TrainConfig)
    student: TrainConfig = field(default_factory=TrainConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def output_dir(self) -> Path:
        """``<output_root>/<profile>``, where every stage of this run writes."""
        root = Path(self.output_root)
        if not root.is_absolute():
            root = _REPO_ROOT / root
        return root / self.profile


# ---------------------------------------------------------------------------------------------------
# strict conversion


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (section), got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - programming error


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {[prefix + k for k in unknown]}; valid keys in "
            f"{where or 'the top level'}: {names}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def profile_path(profile: str | os.PathLike) -> Path:
    """The YAML file of a profile name (``params/<name>.yaml``) or an explicit path."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"profile file {p} does not exist")
        return p
    folder = Path(os.environ.get("FASTERSEG_PARAMS_DIR", _REPO_ROOT / "params"))
    candidate = folder / f"{profile}.yaml"
    if not candidate.exists():
        have = sorted(x.stem for x in folder.glob("*.yaml")) if folder.exists() else []
        raise ConfigError(f"no profile {profile!r} in {folder}; available: {have}")
    return candidate


def load_config(profile: str | os.PathLike = "paper", overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build the run configuration from a profile and dotted overrides.

    Args:
        profile: a profile name (``params/<name>.yaml``) or a path to a YAML file.
        overrides: ``{"teacher.epochs": 2, "data.root": "/data/camvid"}``; applied after the profile.

    Returns:
        A frozen :class:`RunConfig`. ``profile`` is set to the profile's name.

    Raises:
        ConfigError: unknown key, wrong type, or missing profile; the message lists the valid keys.
    """
    path = profile_path(profile)
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    tree.setdefault("profile", path.stem)
    for k, v in (overrides or {}).items():
        _set_dotted(tree, k, v)
    return _build(RunConfig, tree, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config, suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def from_dict(tree: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`to_dict` (strict, like :func:`load_config`)."""
    return _build(RunConfig, tree, "")


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved configuration as YAML (the provenance record saved with every run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
