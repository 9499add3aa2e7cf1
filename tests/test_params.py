import pytest

from mna_tune.params import ParamsError, load_params

from conftest import REPO


def test_repository_params_load_with_documented_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.model.base == "tiny-qwen3"
    assert params.extract.on_error == "fail"
    assert params.filter.exclude_categories == ["예체능", "종교", "보건"]
    assert (params.lora.r, params.lora.alpha, params.lora.dropout) == (8, 32, 0.1)
    assert params.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert params.mlflow.tracking_uri == ""
    assert params.train.max_steps == -1


def _write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_is_rejected_by_name(tmp_path):
    path = _write(tmp_path, "data: {aihub_dir: a, mna_path: b}\nlora: {rank: 16}\n")
    with pytest.raises(ParamsError, match=r"lora\.rank"):
        load_params(path)


def test_wrong_type_names_the_key(tmp_path):
    path = _write(tmp_path, "data: {aihub_dir: a, mna_path: b}\ntrain: {learning_rate: fast}\n")
    with pytest.raises(ParamsError, match=r"train\.learning_rate"):
        load_params(path)


def test_missing_data_section_and_bad_on_error(tmp_path):
    with pytest.raises(ParamsError, match=r"data"):
        load_params(_write(tmp_path, "extract: {on_error: fail}\n"))
    with pytest.raises(ParamsError, match=r"extract\.on_error"):
        load_params(_write(tmp_path, "data: {aihub_dir: a, mna_path: b}\nextract: {on_error: ignore}\n"))


def test_column_scorer_needs_a_csv_and_split_must_leave_training_rows(tmp_path):
    with pytest.raises(ParamsError, match="scores_path"):
        load_params(_write(tmp_path, "data: {aihub_dir: a, mna_path: b}\nfilter: {scorer: column}\n"))
    with pytest.raises(ParamsError, match="below 1"):
        load_params(_write(tmp_path, "data: {aihub_dir: a, mna_path: b}\nsplit: {val_size: 0.5, test_size: 0.5}\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="YAML"):
        load_params(_write(tmp_path, "data: [unclosed\n"))
