import pytest

from helpers import tiny_params
from mna_tune.modeling import TINY, load_base_model, resolve_base
from mna_tune.qwen_tokenizer import QWEN3_VOCAB_SIZE, ModelSourceError, qwen_tiktoken_path


def test_qwen3_tokenizer_is_built_offline_with_the_real_ids(qwen3_tokenizer):
    assert qwen3_tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    ids = qwen3_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>", "</think>"])
    assert ids == [151644, 151645, 151667, 151668]
    assert qwen3_tokenizer.eos_token == "<|im_end|>" and qwen3_tokenizer.pad_token == "<|endoftext|>"
    assert len(qwen3_tokenizer) == 151669


def test_korean_round_trips_and_nfd_input_is_composed(qwen3_tokenizer):
    text = "합병의 두 가지 유형은 무엇인가요? 2024년"
    ids = qwen3_tokenizer(text).input_ids
    assert qwen3_tokenizer.decode(ids) == text
    nfd = "\u1112\u1161\u11b8\u1107\u1167\u11bc"  # 합병, decomposed
    assert qwen3_tokenizer(nfd).input_ids == qwen3_tokenizer("합병").input_ids


def test_think_tags_survive_decoding_but_im_end_does_not(qwen3_tokenizer):
    ids = qwen3_tokenizer("<think>\n\n</think>\n\n답<|im_end|>").input_ids
    assert qwen3_tokenizer.decode(ids, skip_special_tokens=True) == "<think>\n\n</think>\n\n답"


def test_tiktoken_file_is_verified():
    assert qwen_tiktoken_path().name == "qwen.tiktoken"


def test_resolve_base(tmp_path):
    assert resolve_base(TINY).kind == "tiny"
    assert resolve_base("Qwen/Qwen3-8B").kind == "hub"
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelSourceError, match="holds no config.json"):
        resolve_base(str(tmp_path / "model"))
    (tmp_path / "model" / "config.json").write_text("{}")
    assert resolve_base(str(tmp_path / "model")).kind == "folder"
    with pytest.raises(ModelSourceError, match="model folder not found"):
        resolve_base(str(tmp_path / "missing"))
    with pytest.raises(ModelSourceError, match="neither"):
        resolve_base("not a model")


def test_tiny_model_is_reproducible_from_its_seed():
    import torch

    model = tiny_params().model
    a, b = load_base_model(model), load_base_model(model)
    c = load_base_model(model.model_copy(update={"tiny_seed": 1}))
    assert a.config.vocab_size == QWEN3_VOCAB_SIZE and a.config.model_type == "qwen3"
    weights = a.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(weights, b.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(weights, c.model.layers[0].self_attn.q_proj.weight)


def test_cuda_only_options_fail_clearly_before_any_work():
    import torch

    from mna_tune.modeling import check_device_support

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without CUDA")
    model = tiny_params().model
    with pytest.raises(ModelSourceError, match="model.quantization: 4bit needs a CUDA GPU"):
        check_device_support(model.model_copy(update={"base": "Qwen/Qwen3-8B", "quantization": "4bit"}))
    with pytest.raises(ModelSourceError, match="flash_attention_2 needs a CUDA GPU"):
        check_device_support(
            model.model_copy(update={"base": "Qwen/Qwen3-8B", "attn_implementation": "flash_attention_2"})
        )
    check_device_support(model)  # the defaults run anywhere


def test_train_stage_refuses_qlora_on_cpu_before_loading_anything(workspace, capsys):
    import torch
    import yaml

    from helpers import tiny_params
    from mna_tune.cli import main

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without CUDA")
    params = tiny_params().model_dump(mode="json")
    params["model"] = {**params["model"], "base": "Qwen/Qwen3-8B", "quantization": "4bit"}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    assert main(["train"]) == 1
    assert "model.quantization: 4bit needs a CUDA GPU" in capsys.readouterr().err
    assert not (workspace / "mlflow.db").exists()  # failed before MLflow, the tokenizer or the model
