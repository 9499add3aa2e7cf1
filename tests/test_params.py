import copy

import pytest
import yaml
from pydantic import BaseModel

from helpers import REPO
from mna_tune.params import Params, ParamsError, load_params

RAW = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.model.base == "tiny-qwen3" and params.extract.on_error == "fail"
    assert params.filter.exclude_categories == ["예체능", "종교", "보건"]
    assert str(params.paths.split.train) == "data/processed/train.jsonl"


def _every_field(model: type[BaseModel], prefix=""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _every_field(inner, f"{prefix}{name}.")


def test_defaults_live_in_params_yaml_only():
    """No field holds a second default: every key must come from params.yaml."""
    with_default = [name for name, field in _every_field(Params) if not field.is_required()]
    assert with_default == []


def _write(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def _with(section, key, value):
    raw = copy.deepcopy(RAW)
    raw[section][key] = value
    return raw


def test_missing_key_is_named(tmp_path):
    raw = copy.deepcopy(RAW)
    del raw["train"]["learning_rate"]
    with pytest.raises(ParamsError, match=r"train\.learning_rate: Field required"):
        load_params(_write(tmp_path, raw))


def test_unknown_key_is_rejected_by_name(tmp_path):
    with pytest.raises(ParamsError, match=r"lora\.rank"):
        load_params(_write(tmp_path, _with("lora", "rank", 16)))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "learning_rate", "fast", r"train\.learning_rate"),
        ("train", "num_train_epochs", float("inf"), r"train\.num_train_epochs: .*finite"),
        ("train", "learning_rate", float("nan"), r"train\.learning_rate"),
        ("train", "lr_scheduler_type", "linaer", r"train\.lr_scheduler_type"),
        ("lora", "target_modules", [], r"lora\.target_modules"),
        ("mlflow", "registered_model", "  ", r"mlflow\.registered_model: .*must not be empty"),
        ("model", "base", "", r"model\.base: .*must not be empty"),
        ("extract", "on_error", "ignore", r"extract\.on_error"),
        ("filter", "scorer", "column", "scores_path"),
        ("split", "val_size", 0.5, "below 1"),
        ("merge", "near_dup_threshold", 1.5, r"merge\.near_dup_threshold"),
    ],
)
def test_bad_values_name_the_key(tmp_path, section, key, value, message):
    raw = _with(section, key, value)
    if key == "val_size":
        raw["split"]["test_size"] = 0.5
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, raw))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="YAML"):
        load_params(_bad_yaml(tmp_path))


def _bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n", encoding="utf-8")
    return path
