"""Typed run configuration: profiles load, bad keys and types fail with the valid keys, overrides merge,
YAML round trip."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from fasterseg_core.config import (
    ConfigError,
    DistillConfig,
    RunConfig,
    TrainConfig,
    dump_config,
    from_dict,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (REPO / "params").glob("*.yaml"))


def test_the_four_profiles_of_issue_2_exist():
    assert {"smoke", "camvid-cpu", "camvid-gpu", "cityscapes-paper"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_loads_and_names_itself(profile):
    cfg = load_config(profile)
    assert isinstance(cfg, RunConfig)
    assert cfg.profile == profile
    assert cfg.output_dir == REPO / "outputs" / profile


def test_a_profile_file_path_loads_like_its_name():
    assert load_config(REPO / "params" / "smoke.yaml") == load_config("smoke")


def test_profile_values_override_the_defaults_and_only_them():
    cfg = load_config("smoke")
    assert cfg.data.dataset == "synthetic"
    assert cfg.teacher.epochs == 2 and cfg.teacher.crop_size_hw == (64, 128)
    assert cfg.teacher.lr == TrainConfig().lr  # not in smoke.yaml: the paper default


def test_paper_profile_trains_with_the_dataclass_defaults():
    # params/cityscapes-paper.yaml promises "every value is the dataclass default" (spec §9)
    cfg = load_config("cityscapes-paper")
    assert cfg.teacher == cfg.student == TrainConfig() and cfg.distill == DistillConfig()
    assert cfg.teacher.epochs == 600 and cfg.teacher.batch_size == 12 and cfg.teacher.lr == 0.01  # spec §9.2


def test_missing_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available") as err:
        load_config("no-such-profile")
    assert "smoke" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"teacher.epochz": 1}, ["teacher.epochz", "epochs", "iters_per_epoch"]),
        ({"teachr.epochs": 1}, ["teachr", "teacher", "distill"]),
        ({"colour": "red"}, ["colour", "profile", "device"]),
    ],
)
def test_unknown_key_fails_with_the_valid_keys(overrides, names):
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_config("smoke", overrides)
    assert all(name in str(err.value) for name in names), str(err.value)


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"teacher.epochs": "ten"}, "teacher.epochs"),
        ({"teacher.epochs": 2.5}, "teacher.epochs"),
        ({"teacher.epochs": True}, "teacher.epochs"),  # a bool is not an int here
        ({"teacher.lr": "0.1"}, "teacher.lr"),
        ({"data.use_flip": 1}, "data.use_flip"),
        ({"teacher.crop_size_hw": [64, 128, 3]}, "teacher.crop_size_hw"),
        ({"teacher.crop_size_hw": 64}, "teacher.crop_size_hw"),
        ({"data.dataset": "kitti"}, "data.dataset"),
        ({"teacher": 3}, "teacher"),
    ],
)
def test_wrong_type_fails_naming_the_field(overrides, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config("smoke", overrides)


def test_a_misspelt_latency_backend_fails_at_load_naming_the_valid_ones():
    from fasterseg_core.backend_table import BACKENDS

    with pytest.raises(ConfigError) as err:
        load_config("camvid-cpu", {"latency.backends": ["eagre"]})
    message = str(err.value)
    assert "\n" not in message and message.startswith("latency.backends[0]: 'eagre'")
    assert all(repr(name) in message for name in BACKENDS), message
    # only the name is checked at load: a backend this machine cannot run is recorded as unavailable later
    assert load_config("smoke", {"latency.backends": list(BACKENDS)}).latency.backends == tuple(BACKENDS)


def test_dotted_overrides_merge_into_the_profile():
    cfg = load_config("smoke", {"teacher.epochs": 5, "data.scales": [1.0], "device": "cpu"})
    assert cfg.teacher.epochs == 5
    assert cfg.teacher.batch_size == 2  # rest of the section still from smoke.yaml
    assert cfg.distill.epochs == 2  # sibling sections untouched
    assert cfg.data.scales == (1.0,)  # lists become tuples
    assert isinstance(cfg.teacher.lr, float)


def test_ints_are_accepted_for_floats():
    assert load_config("smoke", {"teacher.lr": 1}).teacher.lr == 1.0


def test_config_is_frozen():
    cfg = load_config("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.teacher.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("profile", PROFILES)
def test_yaml_round_trip(profile, tmp_path):
    cfg = load_config(profile, {"teacher.epochs": 3})
    path = dump_config(cfg, tmp_path / "run" / "config.yaml")
    tree = yaml.safe_load(path.read_text())
    assert from_dict(tree) == cfg
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)
    # a dumped config is itself a loadable profile
    assert load_config(path) == cfg


def test_from_dict_is_as_strict_as_load_config():
    tree = to_dict(load_config("smoke"))
    tree["teacher"]["epochz"] = 1
    with pytest.raises(ConfigError, match="epochz"):
        from_dict(tree)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_search_table_follows_the_latency_resolution(profile):
    """search.latency_input_hw is derived from latency.input_hw (issue 27): one resolution to keep, not two."""
    cfg = load_config(profile)
    assert cfg.search.latency_input_hw == cfg.latency.input_hw
    moved = load_config(profile, {"latency.input_hw": [256, 512]})
    assert moved.search.latency_input_hw == (256, 512)


def test_a_search_table_at_another_resolution_fails_unless_a_table_is_given():
    with pytest.raises(ConfigError, match=r"search.latency_input_hw: \[256, 512\] differs from latency.input_hw"):
        load_config("smoke", {"search.latency_input_hw": [256, 512]})
    cfg = load_config("smoke", {"search.latency_input_hw": [256, 512], "search.latency_table": "table.json"})
    assert cfg.search.latency_input_hw == (256, 512)  # a given table (the authors') fixes its own resolution


@pytest.mark.parametrize("profile", PROFILES)
def test_every_record_a_profile_points_to_exists(profile):
    """A profile's why-lines point to records (issue 27): each benchmarks/results path they name must match files."""
    text = (REPO / "params" / f"{profile}.yaml").read_text()
    for ref in re.findall(r"benchmarks/results/[\w./*-]+", text):
        ref = ref.rstrip(".")
        matches = list(REPO.glob(ref)) if "*" in ref else [REPO / ref]
        assert matches and all(m.exists() for m in matches), f"params/{profile}.yaml names {ref}, which is not there"
        assert all(m.is_file() or any(m.iterdir()) for m in matches), ref
