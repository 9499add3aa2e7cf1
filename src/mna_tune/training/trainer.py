"""The SFT trainer, built in one place: the train stage, the tests and the benchmarks use it.

Rows are rendered by chat.py as prompt (system + user + assistant header with the empty
Qwen3 think block) and completion (answer + <|im_end|>). TRL's prompt-completion path
masks the prompt, so only the answer and its end-of-turn token carry loss. The trainer is
TRL's SFTTrainer with its loss computed only at those positions, in chunks (loss.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..chat import training_pair
from ..params import Params
from ..workspace import atomic_open, read_jsonl


def sft_records(path: Path, think_in_loss: bool) -> list[dict]:
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


def sft_args(params: Params, output_dir: Path, max_length: int, has_eval: bool, **overrides):
    """TRL's SFTConfig from params.yaml (benchmarks pass overrides for the notebook's setup)."""
    import torch
    from trl import SFTConfig

    from ..modeling import dtype_name

    cfg = params.train
    padding_free = cfg.padding_free or cfg.packing
    dtype = dtype_name(params.model.dtype)  # mixed precision follows model.dtype, not just the hardware
    options: dict[str, Any] = dict(
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
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not torch.cuda.is_available(),  # several CPU processes then join over gloo
        ddp_find_unused_parameters=False,  # LoRA: the frozen base has no gradients by design
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    options.update(overrides)
    return SFTConfig(**options)


def build_trainer(
    params: Params,
    model,
    tokenizer,
    train_records: list[dict],
    val_records: list[dict],
    output_dir: Path,
    max_length: int,
    callbacks=(),
    **overrides,
):
    from datasets import Dataset

    from ..modeling import lora_config
    from .loss import kept_token_trainer_class

    return kept_token_trainer_class()(
        model=model,
        args=sft_args(params, output_dir, max_length, bool(val_records), **overrides),
        train_dataset=Dataset.from_list(train_records),
        eval_dataset=Dataset.from_list(val_records) if val_records else None,
        processing_class=tokenizer,
        peft_config=lora_config(params.lora, params.model),
        callbacks=list(callbacks),
    )


def save_adapter(trainer, adapter_dir: Path) -> None:
    """The PEFT folder, written beside its place and renamed in whole. PEFT stores
    target_modules from a set, in an order that follows Python's hash seed, so the same
    training would give a different file in every process: they are sorted."""
    import shutil

    staging = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(str(staging))
    config_path = staging / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    with atomic_open(config_path) as out:
        out.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
