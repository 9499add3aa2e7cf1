"""train and evaluate on a handful of rows: adapter format, answer-only labels, MLflow run
and registry version. The full pipeline runs in test_e2e_dvc.py."""

import json
import subprocess

import pytest

from helpers import QA, tiny_params, with_section
from mna_tune.chat import build_messages, render_completion, render_prompt

THINK_IDS = [151667, 271, 151668, 271]  # <think> "\n\n" </think> "\n\n"


@pytest.mark.parametrize("think_in_loss", [False, True], ids=["think-masked", "think-in-loss"])
def test_label_masks_token_by_token(qwen3_tokenizer, think_in_loss):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mna_tune.chat import training_pair
    from mna_tune.modeling import load_base_model

    messages = build_messages(*QA[0])
    trainer = SFTTrainer(
        model=load_base_model(tiny_params().model),
        processing_class=qwen3_tokenizer,
        args=SFTConfig(
            output_dir="/tmp/unused", report_to="none", completion_only_loss=True, max_length=384, bf16=False
        ),
        train_dataset=Dataset.from_list([training_pair(messages, think_in_loss)]),
    )
    example = trainer.train_dataset[0]
    ids, labels = example["input_ids"], example["labels"]
    full = qwen3_tokenizer(render_prompt(messages) + render_completion(QA[0][1]), add_special_tokens=False).input_ids
    assert ids == full  # the same tokens whichever side of the split the think block is on
    answer = qwen3_tokenizer(QA[0][1] + "<|im_end|>", add_special_tokens=False).input_ids
    learned = [label for label in labels if label != -100]
    assert learned == (THINK_IDS + answer if think_in_loss else answer)
    assert learned[-1] == 151645  # <|im_end|> is always learned
    assert labels[-len(learned) :] == ids[-len(learned) :] and all(x == -100 for x in labels[: -len(learned)])
    masked = qwen3_tokenizer.decode(ids[: len(ids) - len(learned)])
    assert masked.endswith("<|im_start|>assistant\n" if think_in_loss else "</think>\n\n")


def test_train_writes_a_peft_adapter_and_logs_to_mlflow(workspace):
    import mlflow
    from peft import PeftModel

    from mna_tune.modeling import load_base_model
    from mna_tune.training.train import run_train

    figures = run_train(tiny_params())
    adapter = workspace / "models/adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    lora = tiny_params().lora
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (lora.r, lora.alpha, lora.dropout)
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    PeftModel.from_pretrained(load_base_model(tiny_params().model), str(adapter))
    metrics = json.loads((workspace / "metrics/train.json").read_text())
    assert metrics == {"val_loss": figures["val_loss"], "steps": 3}  # the DVC metrics: nothing that varies by run
    assert metrics["val_loss"] > 0 and figures["train_loss"] > 0  # the mean over the schedule: MLflow only

    run_id = json.loads((workspace / "models/train_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    run = client.get_run(run_id)
    assert run.data.params["lora.r"] == str(tiny_params().lora.r) and run.data.params["model.base"] == "tiny-qwen3"
    assert len(client.get_metric_history(run_id, "train/loss")) == 3  # one point per step
    assert run.data.metrics["train_rows"] == 8 and run.data.metrics["train_seconds"] > 0  # timings: MLflow only
    assert run.data.metrics["train_loss"] == figures["train_loss"]
    assert "adapter_model.safetensors" in [f.path.split("/")[-1] for f in client.list_artifacts(run_id, "adapter")]


def test_training_lowers_the_loss_on_rows_it_sees(workspace):
    from mna_tune.training.train import run_train

    run_train(tiny_params(max_steps=40, learning_rate=5e-3, warmup_ratio=0.0))
    curve = [float(line.split(",")[1]) for line in (workspace / "plots/train_loss.csv").read_text().splitlines()[1:]]
    assert len(curve) == 40
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.3


def refusing_gate(params):
    """A gate no few-step adapter passes: ROUGE-L must gain half a point."""
    return with_section(params, "evaluate", gate=params.evaluate.gate.model_copy(update={"min_delta": 0.5}))


def test_evaluate_compares_base_and_adapter_and_registers_a_version(workspace):
    import mlflow

    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.training.train import run_train

    params = refusing_gate(tiny_params())
    run_train(params)
    metrics = run_evaluate(params)
    details = json.loads((workspace / "reports/eval.json").read_text())
    assert details["test_rows"] == 2 and details["generated_rows"] == 2 and details["base_from_cache"] is False
    for figures in (metrics, metrics["base"]):  # the adapter's at the top level, the base model's nested
        assert figures["eval_loss"] > 0 and 0 <= figures["rougeL_f1"] <= 1
    for name in ("adapter", "base"):
        assert 0 <= details["overall"][name]["korean_only_share"] <= 1
        assert "gen_tokens_per_second" not in details["overall"][name]  # a timing: MLflow only
    assert metrics["delta"]["eval_loss"] == pytest.approx(metrics["eval_loss"] - metrics["base"]["eval_loss"], abs=1e-5)
    assert metrics["rows"] == {"train": 8, "val": 2, "test": 2}
    # headline figures only: nothing from the registry (the gate) that would make `dvc metrics diff` lie
    assert set(metrics) == {"rougeL_f1", "chrf", "eval_loss", "korean_only_share", "base", "delta", "engine", "rows"}
    assert metrics["engine"] == "transformers"
    assert set(details["by_group"]["source"]) == {"mna"} and set(details["by_group"]["category"]) == {"M&A"}
    predictions = [json.loads(line) for line in (workspace / "reports/predictions.jsonl").read_text().splitlines()]
    assert [p["question"] for p in predictions] == [q for q, _ in QA[2:]]
    assert all("<think>" not in p["adapter"] and "base" in p for p in predictions)
    report = (workspace / "reports/eval.md").read_text()
    assert "## Overall" in report and "## By category" in report and QA[2][0] in report

    client = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    name = params.mlflow.registered_model
    (version,) = client.search_model_versions(f"name='{name}'")
    version = client.get_model_version(name, version.version)
    run_id = json.loads((workspace / "models/train_run.json").read_text())["run_id"]
    assert version.run_id == run_id and version.source.startswith("models:/")  # a logged pyfunc model
    assert version.tags["lineage.verified"] == "false"  # no dvc.lock here: nothing vouches for the data
    assert len([k for k in version.tags if not k.startswith("record.")]) <= 15 and "adapter.md5" in version.tags
    # the version page's description holds lineage, decision and figures in full (Markdown)
    assert "**Gate** not passed" in version.description and "no dvc.lock lineage" in version.description
    assert client.get_model_version_by_alias(name, "candidate").version == version.version
    # a gate no 3-step adapter can pass keeps it from champion
    assert version.tags["gate.passed"] == "false" and "gate (rougeL_f1" in report and "not passed" in report
    assert "answers generated by transformers" in report
    assert client.get_run(run_id).data.tags["eval.engine"] == "transformers"
    assert "< required +0.500000" in version.tags["gate.reason"]
    assert details["memorisation_probe"] is None and details["parity"] is None  # both off in tiny_params
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, "champion")
    run = client.get_run(run_id)
    assert run.data.metrics["eval/adapter/eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert run.data.metrics["eval/adapter/gen_tokens_per_second"] > 0
    artifacts = [f.path for f in client.list_artifacts(run_id, "eval")]
    assert "eval/eval.md" in artifacts and "eval/predictions.json" in artifacts
    from mna_tune.registry.registry import Registry

    adapter = Registry(params.mlflow).download_adapter(version, workspace / "dl")
    assert (adapter / "adapter_model.safetensors").read_bytes() == (
        workspace / "models/adapter/adapter_model.safetensors"
    ).read_bytes()

    # Evaluating the same adapter again (a run-cache restore) registers nothing new and
    # rewrites no tag of the run; the base model's outputs now come from the cache.
    tags_before = client.get_run(run_id).data.tags
    again = run_evaluate(params)
    assert json.loads((workspace / "reports/eval.json").read_text())["base_from_cache"] is True
    assert again["base"] == metrics["base"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    after = client.get_run(run_id).data.tags
    assert {k: v for k, v in after.items() if not k.startswith("gate.")} == {
        k: v for k, v in tags_before.items() if not k.startswith("gate.")
    }


def one_error_line(stderr: str) -> str:
    """The CLI's error: exactly one line, and no traceback (libraries may log around it)."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("mna-tune ")]
    return line


@pytest.mark.slow
def test_no_champion_is_one_line_with_the_ways_on(workspace, capsys):
    from helpers import cli_env, write_params
    from mna_tune.cli import main
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.training.train import run_train

    params = refusing_gate(tiny_params())
    write_params(workspace, params)
    run_train(params)
    run_evaluate(params)  # the gate refuses it
    for command in (
        ["ask", "합병이란?", "--model", "@champion"],
        ["audit", "@champion"],
        ["export", "--merged", str(workspace / "out"), "--model", "@champion"],
    ):
        assert main(command) == 1
        error = one_error_line(capsys.readouterr().err)
        assert "no version is champion yet" in error
        assert "mna-tune promote 1" in error and "@candidate" in error and "< required +0.5" in error
    assert main(["promote", "7", "--reason", "unknown version"]) == 1
    assert "no model version '7'" in capsys.readouterr().err

    # A deleted store: one line, before any model work (a new process: MLflow caches open stores)
    (workspace / "mlflow.db").rename(workspace / "elsewhere.db")
    done = subprocess.run(
        ["mna-tune", "evaluate"], cwd=workspace, env=cli_env(workspace), capture_output=True, text=True, timeout=300
    )
    error = one_error_line(done.stderr)
    assert done.returncode == 1 and "is not in sqlite:///" in error and "dvc repro --force --single-item train" in error
    (workspace / "models/train_run.json").unlink()  # a stage whose input is missing
    assert main(["evaluate"]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        "mna-tune evaluate: error: models/train_run.json: not found; run the stages before it first "
        "(dvc repro evaluate)"
    )


@pytest.mark.slow
def test_export_merged_loads_in_plain_transformers_and_ask_answers(workspace):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mna_tune.modeling import load_adapter_model
    from mna_tune.serving.ask import ask
    from mna_tune.serving.export import export_merged
    from mna_tune.training.train import run_train

    params = tiny_params(max_steps=2, learning_rate=5e-2)
    run_train(params)
    out = export_merged(params, workspace / "merged")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    from mna_tune.registry.lineage import workspace_md5
    from mna_tune.serving.export import MARKER

    origin = json.loads((out / MARKER).read_text())["merged export of"]  # traceable: the adapter's hash
    assert origin["adapter_md5"] == workspace_md5(workspace / "models/adapter")
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    messages = build_messages(QA[0][0])
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert prompt == render_prompt(messages)
    # by default, as a plain user calls it (no system prompt, no enable_thinking): the training prompt, token for token
    from mna_tune.chat import prompt_ids

    plain = tokenizer.apply_chat_template([{"role": "user", "content": QA[0][0]}], add_generation_prompt=True)
    plain = plain["input_ids"] if isinstance(plain, dict) or hasattr(plain, "keys") else plain
    assert list(plain) == prompt_ids(tokenizer, messages)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    peft_model = load_adapter_model(params.model, workspace / "models/adapter")
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(input_ids=ids).logits, atol=1e-4)
    answer = ask(params, QA[0][0])
    assert isinstance(answer, str) and "<think>" not in answer


@pytest.mark.parametrize("too_long", ["drop", "keep"])
def test_rows_over_max_length_are_dropped_or_kept_whole_never_cut(qwen3_tokenizer, too_long):
    from mna_tune.chat import training_pair
    from mna_tune.training.trainer import fit_to_max_length

    short = training_pair(build_messages(*QA[0]))
    long = training_pair(build_messages(QA[1][0], "합병 " * 200))
    length = lambda r: len(qwen3_tokenizer(r["prompt"] + r["completion"]).input_ids)  # noqa: E731
    cap = length(short) + 5
    records, longer, max_length = fit_to_max_length(qwen3_tokenizer, [short, long], cap, too_long)
    assert longer == 1
    if too_long == "drop":
        assert records == [short] and max_length == cap
    else:
        assert records == [short, long] and max_length == length(long)  # the end-of-turn token survives


@pytest.mark.slow
def test_gate_compares_candidate_and_champion_on_the_same_test_split(workspace):
    """After a data change the champion's stored figures come from another test split: the
    champion's adapter is evaluated on the new split first, and the decision says so."""
    import mlflow

    from helpers import chat_rows
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.registry.promotion import promote
    from mna_tune.registry.registry import Registry
    from mna_tune.training.train import run_train
    from mna_tune.workspace import write_jsonl

    params = tiny_params()
    run_train(params)
    run_evaluate(params)
    registry = Registry(params.mlflow)
    promote(registry, "1", "accepted by hand for the test", "cli")

    write_jsonl(workspace / "data/processed/test.jsonl", chat_rows(QA[1:]))  # a changed test split
    other = tiny_params(learning_rate=0.05)  # another adapter: a second version
    run_train(other)
    run_evaluate(other)
    reason = registry.version("2").tags["gate.reason"]
    assert "champion v1 re-evaluated on it" in reason
    client = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    assert len(client.search_model_versions(f"name='{params.mlflow.registered_model}'")) == 2

    # Each version's traces are its own: from its run, linked to its logged model, tagged with it.
    from mna_tune.registry.traces import run_traces

    seen = set()
    for number, test_rows in (("1", 2), ("2", 3)):
        version = registry.version(number)
        traces = run_traces(params.mlflow, version.run_id)
        assert len(traces) == test_rows and not seen & {t.info.trace_id for t in traces}
        seen |= {t.info.trace_id for t in traces}
        for trace in traces:
            assert trace.info.tags["model_version"] == number
            assert trace.info.trace_metadata["mlflow.modelId"] == version.source.removeprefix("models:/")
            assert {a.metadata["mlflow.assessment.sourceRunId"] for a in trace.info.assessments} == {version.run_id}


def test_git_dirty_counts_code_params_and_inputs_not_pipeline_outputs(tmp_path, monkeypatch):
    import subprocess

    from mna_tune.registry.tracking import git_info

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    git = lambda *args: subprocess.run(["git", *args], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    for name in ("params.yaml", "dvc.lock", "metrics/eval.json", "src/code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    outputs = tiny_params().paths.outputs()
    (tmp_path / "dvc.lock").write_text("b\n")
    (tmp_path / "metrics/eval.json").write_text("b\n")
    assert git_info(outputs)["git_dirty"] == "false"  # the pipeline's own outputs
    (tmp_path / "params.yaml").write_text("b\n")
    assert git_info(outputs)["git_dirty"] == "true"
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # an experiment's params are its own
    assert git_info(outputs)["git_dirty"] == "false"
    (tmp_path / "src/code.py").write_text("b\n")
    info = git_info(outputs)
    assert info["git_dirty"] == "true" and info["git_dirty_files"] == "src/code.py"


@pytest.mark.slow
def test_export_never_destroys_what_it_did_not_make(workspace, capsys):
    from helpers import write_params
    from mna_tune.cli import main
    from mna_tune.training.train import run_train

    params = tiny_params(max_steps=1)
    write_params(workspace, params)
    run_train(params)
    notes = workspace / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    assert main(["export", "--merged", "notes"]) == 1
    assert "exists and is not empty" in capsys.readouterr().err and (notes / "keep.txt").read_text() == "mine"
    assert main(["export", "--merged", "notes", "--force"]) == 1
    assert "not a previous export" in capsys.readouterr().err and (notes / "keep.txt").exists()
    assert main(["export", "--merged", ".", "--force"]) == 1
    assert "holds a repository" in capsys.readouterr().err
    assert (workspace / "params.yaml").exists()

    assert main(["export", "--merged", "out"]) == 0
    assert (workspace / "out/model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by others
    assert main(["export", "--merged", "out"]) == 1  # a second export needs --force ...
    assert main(["export", "--merged", "out", "--force"]) == 0  # ... and then replaces the first
    assert not list(workspace.glob(".out.*.tmp"))
