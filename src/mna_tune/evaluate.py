"""evaluate stage: the adapter on the test split, Korean-aware metrics, MLflow registry.

Answer-only eval loss (same masking as training), greedy generation with left padding,
ROUGE-L over Kiwi morphemes, chrF and the Korean-only share. The adapter is registered
as a new version of mlflow.registered_model, tagged with the git commit and the dvc.lock
md5 of every raw input and every split file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from .chat import answer_of, question_of, render_completion, render_prompt, strip_think
from .data.io import file_md5, read_jsonl, write_json, write_jsonl
from .params import Params


@dataclass(frozen=True)
class EvaluatePaths:
    test: Path = Path("data/processed/test.jsonl")
    adapter: Path = Path("models/adapter")
    run_info: Path = Path("models/train_run.json")
    metrics: Path = Path("metrics/eval.json")
    predictions: Path = Path("reports/predictions.jsonl")
    lock: Path = Path("dvc.lock")


def split_files(test_path: Path) -> list[Path]:
    return [test_path.with_name(f"{name}.jsonl") for name in ("train", "val", "test")]


def answer_only_loss(model, tokenizer, rows: list[dict], batch_size: int) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over answer tokens (prompt masked), and the count."""
    import torch

    total, tokens = 0.0, 0
    pad = tokenizer.pad_token_id
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        seqs, labels = [], []
        for row in batch:
            prompt = tokenizer(render_prompt(row["messages"]), add_special_tokens=False).input_ids
            answer = tokenizer(render_completion(answer_of(row["messages"])), add_special_tokens=False).input_ids
            seqs.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(len(seq) for seq in seqs)
        input_ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq in seqs], device=model.device)
        attention = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in seqs], device=model.device)
        label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=model.device)
        with torch.no_grad():
            loss = model(input_ids=input_ids, attention_mask=attention, labels=label_ids).loss
        counted = int((label_ids[:, 1:] != -100).sum())  # the model shifts labels by one
        total += float(loss) * counted
        tokens += counted
    return total / max(tokens, 1), tokens


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int):
    """Greedy answers, batched with left padding. Returns raw texts, new-token count, seconds."""
    import torch

    tokenizer.padding_side = "left"
    texts, new_tokens, started = [], 0, time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        generated = output[:, encoded["input_ids"].shape[1]:]
        new_tokens += int((generated != tokenizer.pad_token_id).sum())
        texts.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
    return texts, new_tokens, time.perf_counter() - started


def lineage_paths(params: Params, test_path: Path) -> dict[str, list[str]]:
    raw_filter = [str(params.filter.lexicon_path)]
    if params.filter.scorer == "column":
        raw_filter.append(str(params.filter.scores_path))
    return {
        "extract": [str(params.data.aihub_dir)],
        "filter": raw_filter,
        "merge": [str(params.data.mna_path)],
        "split": [str(path) for path in split_files(test_path)],
    }


def run_evaluate(params: Params, paths: EvaluatePaths = EvaluatePaths()) -> dict:
    import json

    from transformers import set_seed

    from . import korean_metrics as km
    from .modeling import load_adapter_model, load_tokenizer
    from .tracking import Tracker, git_info, lineage_from_lock

    set_seed(params.train.seed)
    rows = list(read_jsonl(paths.test))
    if not rows:
        raise ValueError(f"{paths.test}: the test split is empty")
    tokenizer = load_tokenizer(params.model.base)
    model = load_adapter_model(params.model.base, paths.adapter, params.model.tiny_seed, params.model.dtype)
    cfg = params.evaluate

    loss, loss_tokens = answer_only_loss(model, tokenizer, rows, cfg.batch_size)
    gen_rows = rows[: cfg.max_generate_rows] if cfg.max_generate_rows else rows
    raw, new_tokens, seconds = generate_answers(
        model, tokenizer, [render_prompt(row["messages"]) for row in gen_rows], cfg.max_new_tokens, cfg.batch_size)
    predictions = [strip_think(text) for text in raw]
    references = [answer_of(row["messages"]) for row in gen_rows]
    rouge = km.rouge_l_f1(predictions, references)
    korean = [km.is_korean_only(text) for text in predictions]

    metrics = {
        "eval_loss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "rougeL_f1": round(sum(rouge) / len(rouge), 6),
        "chrf": round(km.chrf(predictions, references), 4),
        "korean_only_share": round(sum(korean) / len(korean), 6),
        "test_rows": len(rows),
        "generated_rows": len(gen_rows),
        "answer_tokens_scored": loss_tokens,
        "gen_tokens_per_second": round(new_tokens / seconds, 2) if seconds > 0 else None,
    }
    write_jsonl(paths.predictions, (
        {"id": row["id"], "source": row["source"], "category": row["category"],
         "question": question_of(row["messages"]), "reference": ref, "prediction": pred, "raw_output": text,
         "rougeL_f1": round(score, 6), "korean_only": ko}
        for row, ref, pred, text, score, ko in zip(gen_rows, references, predictions, raw, rouge, korean)
    ))

    tracker = Tracker(params.mlflow)
    run_id = json.loads(paths.run_info.read_text(encoding="utf-8"))["run_id"]
    tracker.log_metrics(run_id, {f"eval/{key}": value for key, value in metrics.items() if value is not None})
    tracker.log_artifact(run_id, paths.predictions, "eval")
    if paths.lock.exists():
        tracker.log_artifact(run_id, paths.lock, "lineage")
    lineage = lineage_from_lock(paths.lock, lineage_paths(params, paths.test))
    # The lock must describe the split files evaluated here; a stale lock (a stage run by
    # hand outside DVC) is flagged rather than trusted.
    verified = all(lineage.get(f"lineage.split.{path}") == file_md5(path) for path in split_files(paths.test))
    version = tracker.register_adapter(run_id, "adapter", {
        **git_info(), **lineage, "lineage.verified": str(verified).lower(), "mlflow_run_id": run_id,
        "model.base": params.model.base,
    })
    tracker.set_tags(run_id, {"registered_model": params.mlflow.registered_model,
                              "registered_version": str(version.version)})
    metrics["model_version"] = int(version.version)
    write_json(paths.metrics, metrics)
    print(f"evaluate: loss {metrics['eval_loss']}, ROUGE-L {metrics['rougeL_f1']}, chrF {metrics['chrf']}, "
          f"Korean-only {metrics['korean_only_share']}; registered {params.mlflow.registered_model} "
          f"v{version.version} (lineage verified: {verified})")
    return metrics
