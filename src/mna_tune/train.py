"""train stage: LoRA SFT with TRL + PEFT on the train split; answer-only loss.

Rows are rendered by chat.py as prompt (system + user + assistant header with the empty
Qwen3 think block) and completion (answer + <|im_end|>). TRL's prompt-completion path
masks the prompt, so only the answer and its end-of-turn token carry loss.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .chat import answer_of, render_completion, render_prompt
from .data.io import read_jsonl, write_json
from .params import Params


@dataclass(frozen=True)
class TrainPaths:
    train: Path = Path("data/processed/train.jsonl")
    val: Path = Path("data/processed/val.jsonl")
    adapter: Path = Path("models/adapter")
    run_info: Path = Path("models/train_run.json")
    metrics: Path = Path("metrics/train.json")
    loss_plot: Path = Path("plots/train_loss.csv")
    scratch: Path = Path(".cache/train")  # trainer output_dir: checkpoints live outside DVC outputs


def sft_records(path: Path) -> list[dict]:
    rows = list(read_jsonl(path))
    return [{"prompt": render_prompt(row["messages"]), "completion": render_completion(answer_of(row["messages"]))}
            for row in rows]


def count_too_long(tokenizer, records: list[dict], max_length: int) -> int:
    lengths = [len(tokenizer(r["prompt"] + r["completion"]).input_ids) for r in records]
    return sum(length > max_length for length in lengths)


def _sort_target_modules(config_path: Path) -> None:
    """PEFT stores target_modules from a set, so their order follows Python's hash seed and
    the same training gives a different adapter hash in every process. Sort them."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        return len(data) if isinstance(data, list) else None
    return None


def dataset_inputs(params: Params, paths: TrainPaths, lock: Path = Path("dvc.lock")) -> list[dict]:
    """Raw inputs and splits with the md5 dvc.lock recorded for them (the split stage has
    just run), for MLflow's dataset inputs."""
    from .lineage import lineage_from_lock

    split_paths = [str(paths.train), str(paths.val), str(paths.train.with_name("test.jsonl"))]
    stages = {"extract": [str(params.data.aihub_dir)], "merge": [str(params.data.mna_path)], "split": split_paths}
    hashes = lineage_from_lock(lock, stages)
    extract_rows = None
    if Path("metrics/extract.json").is_file():
        extract_rows = json.loads(Path("metrics/extract.json").read_text(encoding="utf-8")).get("rows")
    contexts = {str(paths.train): "training", str(paths.val): "validation", split_paths[2]: "test"}
    out = []
    for key, md5 in hashes.items():
        _, stage, path = key.split(".", 2)
        rows = extract_rows if stage == "extract" else _rows(Path(path))
        out.append({"name": Path(path).name, "path": path, "md5": md5, "rows": rows,
                    "context": contexts.get(path, "raw")})
    return out


def run_train(params: Params, paths: TrainPaths = TrainPaths()) -> dict:
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from .modeling import load_base_model, load_tokenizer, lora_config
    from .tracking import Tracker, git_info

    set_seed(params.train.seed)
    train_records = sft_records(paths.train)
    val_records = sft_records(paths.val) if paths.val.exists() else []
    if not train_records:
        raise ValueError(f"{paths.train}: no training rows")
    tokenizer = load_tokenizer(params.model.base)
    model = load_base_model(params.model.base, params.model.tiny_seed, params.model.dtype)
    too_long = count_too_long(tokenizer, train_records, params.train.max_length)

    tracker = Tracker(params.mlflow)
    tags = git_info()
    run_id = tracker.start_run(
        run_name=tags.get("dvc_exp_name") or f"repro-{tags['git_commit'][:8]}",
        params=params.model_dump(mode="json"),
        tags={**tags, "stage": "train", "model.base": params.model.base},
    )

    tracker.log_datasets(run_id, dataset_inputs(params, paths))

    cfg = params.train
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = SFTConfig(
        output_dir=str(paths.scratch),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio of total steps
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        logging_steps=cfg.logging_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        eval_strategy="epoch" if val_records else "no",
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=use_bf16,
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_records),
        eval_dataset=Dataset.from_list(val_records) if val_records else None,
        processing_class=tokenizer,
        peft_config=lora_config(params.lora.r, params.lora.alpha, params.lora.dropout, params.lora.target_modules),
        callbacks=[tracker.step_callback(run_id)],
    )
    started = time.perf_counter()
    try:
        result = trainer.train()
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    seconds = time.perf_counter() - started

    staging = paths.adapter.with_name(paths.adapter.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(str(staging))
    _sort_target_modules(staging / "adapter_config.json")
    shutil.rmtree(paths.adapter, ignore_errors=True)
    staging.rename(paths.adapter)  # the adapter folder appears whole or not at all

    history = trainer.state.log_history
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics = {
        "train_loss": round(float(result.training_loss), 6),
        "final_step_loss": round(float(losses[-1][1]), 6) if losses else None,
        "val_loss": round(float(evals[-1]), 6) if evals else None,
        "steps": int(result.global_step),
        "train_rows": len(train_records),
        "val_rows": len(val_records),
        "rows_longer_than_max_length": too_long,
        "trainable_params": int(trainable),
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": round(float(result.metrics.get("train_samples_per_second", 0.0)), 3),
    }
    paths.loss_plot.parent.mkdir(parents=True, exist_ok=True)
    paths.loss_plot.write_text("step,loss\n" + "".join(f"{s},{l}\n" for s, l in losses), encoding="utf-8")
    write_json(paths.metrics, metrics)
    write_json(paths.run_info, {"run_id": run_id, "tracking_uri": tracker.uri})
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None})
    tracker.log_artifacts(run_id, paths.adapter, "adapter")
    tracker.end_run(run_id)  # evaluate adds its metrics and the registry version to this run
    print(f"train: {metrics['steps']} steps, loss {metrics['train_loss']}, val loss {metrics['val_loss']}, "
          f"{seconds:.1f}s; adapter in {paths.adapter}; MLflow run {run_id}")
    return metrics
