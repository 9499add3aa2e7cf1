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

from .chat import training_pair
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
    checkpoints: str = ".cache/checkpoints"  # under the repo root: outside DVC outputs, shared by exp copies


def sft_records(path: Path, think_in_loss: bool = False) -> list[dict]:
    return [training_pair(row["messages"], think_in_loss) for row in read_jsonl(path)]


def fit_to_max_length(tokenizer, records: list[dict], max_length: int, too_long: str) -> tuple[list[dict], int, int]:
    """Never let truncation cut a row's answer or its <|im_end|>: rows longer than
    `max_length` tokens are dropped (`drop`) or kept whole by raising the cap (`keep`).
    Returns (records, rows longer than max_length, the max_length to train with)."""
    lengths = [len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False).input_ids) for r in records]
    longer = sum(length > max_length for length in lengths)
    if too_long == "drop":
        return [r for r, length in zip(records, lengths) if length <= max_length], longer, max_length
    return records, longer, max(lengths + [max_length])


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


def checkpoint_dir(params: Params, paths: TrainPaths) -> Path:
    """Checkpoints of one training job: same data, params and code -> same folder, so a
    rerun after an interruption resumes; anything changed -> a fresh folder."""
    import hashlib

    from .data.io import file_md5
    from .workspace import project_root

    code = Path(__file__).parent
    fingerprint = json.dumps({
        "params": params.model_dump(mode="json", include={"chat", "model", "lora", "train"}),
        "data": [file_md5(path) for path in (paths.train, paths.val) if path.exists()],
        "code": [file_md5(code / name) for name in ("train.py", "chat.py", "modeling.py")],
    }, sort_keys=True)
    return project_root() / paths.checkpoints / hashlib.sha256(fingerprint.encode()).hexdigest()[:20]


def sft_args(params: Params, output_dir: Path, max_length: int, has_eval: bool, **overrides):
    """TRL's SFTConfig from params.yaml (benchmarks pass overrides for the notebook's setup)."""
    import torch
    from trl import SFTConfig

    cfg = params.train
    cuda = torch.cuda.is_available()
    padding_free = cfg.padding_free or cfg.packing
    options = dict(
        output_dir=str(output_dir),
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
        # Rows already fit (fit_to_max_length). Packing fills sequences of max_length with
        # whole rows (bfd never splits a row that fits); padding-free without packing must
        # not truncate, so TRL wants no cap there.
        max_length=None if padding_free and not cfg.packing else max_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        padding_free=padding_free,
        logging_steps=cfg.logging_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,  # several CPU processes then join over gloo
        ddp_find_unused_parameters=False,  # LoRA: the frozen base has no gradients by design
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    options.update(overrides)
    return SFTConfig(**options)


def build_trainer(params: Params, model, tokenizer, train_records: list[dict], val_records: list[dict],
                  output_dir: Path, max_length: int, callbacks=(), **overrides):
    """The one place a trainer is made: the train stage, the packing test and the benchmark use it."""
    from datasets import Dataset
    from trl import SFTTrainer

    from .modeling import lora_config

    return SFTTrainer(
        model=model,
        args=sft_args(params, output_dir, max_length, bool(val_records), **overrides),
        train_dataset=Dataset.from_list(train_records),
        eval_dataset=Dataset.from_list(val_records) if val_records else None,
        processing_class=tokenizer,
        peft_config=lora_config(params.lora.r, params.lora.alpha, params.lora.dropout, params.lora.target_modules),
        callbacks=list(callbacks),
    )


def _start_or_resume_run(params: Params, paths: TrainPaths, checkpoints: Path, resume: bool):
    from .tracking import Tracker, git_info

    tracker = Tracker(params.mlflow)
    run_file = checkpoints / "mlflow_run.json"
    if resume and run_file.is_file():  # the interrupted run goes on: one MLflow run, one loss curve
        run_id = json.loads(run_file.read_text(encoding="utf-8"))["run_id"]
        tracker.set_tags(run_id, {"resumed": "true"})
        return tracker, run_id
    tags = git_info()
    run_id = tracker.start_run(
        run_name=tags.get("dvc_exp_name") or f"repro-{tags['git_commit'][:8]}",
        params=params.model_dump(mode="json"),
        tags={**tags, "stage": "train", "model.base": params.model.base},
    )
    tracker.log_datasets(run_id, dataset_inputs(params, paths))
    checkpoints.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"run_id": run_id}), encoding="utf-8")
    return tracker, run_id


def run_train(params: Params, paths: TrainPaths = TrainPaths()) -> dict | None:
    """Train and write the stage's outputs. Under several processes every rank trains; only
    rank 0 logs to MLflow and writes outputs (the others return None)."""
    from transformers import set_seed

    from .distributed import is_main_process
    from .modeling import check_device_support, load_base_model, load_tokenizer

    check_device_support(params.model.base, params.model.quantization, params.model.attn_implementation)
    main = is_main_process()
    set_seed(params.train.seed)  # same seed on every rank: identical LoRA initialisation
    train_records = sft_records(paths.train, params.chat.think_in_loss)
    val_records = sft_records(paths.val, params.chat.think_in_loss) if paths.val.exists() else []
    if not train_records:
        raise ValueError(f"{paths.train}: no training rows")
    tokenizer = load_tokenizer(params.model.base)
    model = load_base_model(params.model.base, params.model.tiny_seed, params.model.dtype, params.model.quantization,
                            params.model.attn_implementation, for_training=True)
    train_records, too_long, max_length = fit_to_max_length(tokenizer, train_records, params.train.max_length,
                                                            params.train.too_long)
    val_records, val_too_long, val_max_length = fit_to_max_length(tokenizer, val_records, max_length,
                                                                  params.train.too_long)
    max_length = max(max_length, val_max_length)
    if not train_records:
        raise ValueError(f"{paths.train}: every row is longer than train.max_length ({params.train.max_length} "
                         "tokens); raise it or set train.too_long: keep")

    checkpoints = checkpoint_dir(params, paths)
    resume = any(checkpoints.glob("checkpoint-*/trainer_state.json"))
    tracker, run_id = _start_or_resume_run(params, paths, checkpoints, resume) if main else (None, None)
    trainer = build_trainer(params, model, tokenizer, train_records, val_records, checkpoints, max_length,
                            callbacks=[tracker.step_callback(run_id)] if main else [])
    started = time.perf_counter()
    if resume and main:
        print(f"train: resuming from the last checkpoint in {checkpoints}")
    try:
        result = trainer.train(resume_from_checkpoint=True if resume else None)
    except BaseException:
        if main:
            tracker.end_run(run_id, "FAILED")
        raise
    seconds = time.perf_counter() - started
    if not main:
        return None

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
        "processes": int(trainer.args.world_size),  # what the Trainer really ran with
        "packing": params.train.packing,
        "train_rows": len(train_records),
        "val_rows": len(val_records),
        "rows_longer_than_max_length": too_long,
        "val_rows_longer_than_max_length": val_too_long,
        "too_long_action": params.train.too_long,
        "max_length_used": max_length,
        "trainable_params": int(trainable),
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": round(float(result.metrics.get("train_samples_per_second", 0.0)), 3),
    }
    paths.loss_plot.parent.mkdir(parents=True, exist_ok=True)
    paths.loss_plot.write_text("step,loss\n" + "".join(f"{s},{l}\n" for s, l in losses), encoding="utf-8")
    write_json(paths.metrics, metrics)
    write_json(paths.run_info, {"run_id": run_id, "tracking_uri": tracker.uri})
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None and not isinstance(v, bool)})
    tracker.log_artifacts(run_id, paths.adapter, "adapter")
    shutil.rmtree(checkpoints, ignore_errors=True)  # done: the adapter is the artifact now
    tracker.end_run(run_id)  # evaluate adds its metrics and the registry version to this run
    print(f"train: {metrics['steps']} steps on {metrics['processes']} process(es), loss {metrics['train_loss']}, "
          f"val loss {metrics['val_loss']}, {seconds:.1f}s; adapter in {paths.adapter}; MLflow run {run_id}")
    return metrics
