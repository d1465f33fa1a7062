from pathlib import Path

import pytest
import yaml

from lmsleep.config import Params, Workspace, load_params, params_from_dict, render_params_yaml

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_covers_every_field_of_every_stage_config():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    expected = Params().to_dict()
    assert set(raw) == set(expected)
    for section, values in expected.items():
        assert set(raw[section]) == set(values), section
    load_params(REPO / "params.yaml")  # types check out too


def test_dvc_yaml_has_one_stage_per_pipeline_stage():
    from lmsleep.pipeline import STAGES

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"lmsleep {name.replace('_', '-')}")


def test_unknown_keys_and_wrong_types_fail_loudly():
    with pytest.raises(ValueError, match="unknown key"):
        params_from_dict({"seed": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="unknown section"):
        params_from_dict({"sede": {}})
    with pytest.raises(ValueError, match="seed.epochs must be int"):
        params_from_dict({"seed": {"epochs": "many"}})
    with pytest.raises(ValueError, match="must be int"):
        params_from_dict({"seed": {"epochs": True}})


def test_overrides_and_int_to_float(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(render_params_yaml())
    params = load_params(path, {"seed.lr": 1, "night.id": "2026-11-27"})
    assert params.seed.lr == 1.0 and isinstance(params.seed.lr, float)
    assert params.night.id == "2026-11-27"
    assert load_params(tmp_path / "missing.yaml") == Params()


def test_render_round_trips():
    params = Params()
    params.seed.lr = 0.123
    assert params_from_dict(yaml.safe_load(render_params_yaml(params))) == params


def test_workspace_paths(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.night_data("n1") == tmp_path / "data" / "nights" / "n1"
    assert ws.resolve("s3://b/inbox") == "s3://b/inbox"
    assert ws.resolve("data/inbox") == str(tmp_path / "data" / "inbox")
    assert ws.base_model("/abs/model") == Path("/abs/model")
    assert ws.nights() == []


def test_parse_overrides_feeds_load_params(tmp_path):
    from lmsleep.config import parse_overrides

    overrides = parse_overrides(["seed.lr=5e-4", "seed.epochs=3", "night.id=2026-11-27"])
    params = load_params(tmp_path / "none.yaml", overrides)
    assert (params.seed.lr, params.seed.epochs, params.night.id) == (5e-4, 3, "2026-11-27")
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["lr=0.1"])
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["seed.lr"])
