"""train stage: LoRA SFT with TRL + PEFT on the train split; answer-only loss.

Read top to bottom: load rows and model, fit rows to max_length, start (or resume) the
MLflow run, train with checkpoints, write the adapter and metrics, end the run. Under
several processes every rank trains; only rank 0 logs to MLflow and writes outputs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from ..params import Params
from ..workspace import atomic_open, file_md5, project_root, write_json
from .trainer import build_trainer, fit_to_max_length, save_adapter, sft_records


def checkpoint_dir(params: Params) -> Path:
    """Checkpoints of one training job: same data, params and code -> same folder, so a
    rerun after an interruption resumes; anything changed -> a fresh folder."""
    splits = params.paths.split
    code = Path(__file__).parents[1]
    fingerprint = json.dumps(
        {
            "params": params.model_dump(mode="json", include={"chat", "model", "lora", "train"}),
            "data": [file_md5(path) for path in (splits.train, splits.val) if path.exists()],
            "code": [file_md5(path) for path in sorted((code / "training").glob("*.py"))]
            + [file_md5(code / name) for name in ("chat.py", "modeling.py")],
        },
        sort_keys=True,
    )
    return project_root() / params.paths.cache / "checkpoints" / hashlib.sha256(fingerprint.encode()).hexdigest()[:20]


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


def dataset_inputs(params: Params, lock: Path = Path("dvc.lock")) -> list[dict]:
    """Raw inputs and splits with the md5 dvc.lock recorded for them (the split stage has
    just run), for MLflow's dataset inputs."""
    from ..registry.lineage import lineage_from_lock

    splits = params.paths.split
    split_paths = [str(splits.train), str(splits.val), str(splits.test)]
    stages = {"extract": [str(params.data.aihub_dir)], "merge": [str(params.data.mna_path)], "split": split_paths}
    extract_metrics = params.paths.extract.summary
    extract_rows = None
    if extract_metrics.is_file():
        extract_rows = json.loads(extract_metrics.read_text(encoding="utf-8")).get("rows")
    contexts = dict(zip(split_paths, ("training", "validation", "test")))
    out = []
    for key, md5 in lineage_from_lock(lock, stages).items():
        _, stage, path = key.split(".", 2)
        rows = extract_rows if stage == "extract" else _rows(Path(path))
        out.append(
            {"name": Path(path).name, "path": path, "md5": md5, "rows": rows, "context": contexts.get(path, "raw")}
        )
    return out


def checkpoint_to_resume(checkpoints: Path, clean: bool = True) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last) if training
    had steps left there. A checkpoint at the last step (training finished, then the stage
    stopped: the input guard, or a kill before the adapter was saved) leaves nothing to
    train, and resuming it would report no loss: it is removed and training starts over."""
    complete = [
        state.parent
        for state in checkpoints.glob("checkpoint-*/trainer_state.json")
        if state.parent.name.removeprefix("checkpoint-").isdigit()
    ]
    if not complete:
        return None
    newest = max(complete, key=lambda folder: int(folder.name.removeprefix("checkpoint-")))
    try:
        state = json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))
    except OSError:  # another rank of this training removed it meanwhile: a finished one
        return None
    if state["global_step"] < state["max_steps"]:
        return newest
    if clean:
        for folder in checkpoints.glob("checkpoint-*"):
            shutil.rmtree(folder, ignore_errors=True)
    return None


def _remove_checkpoints_of(run_id: str, keep: Path) -> None:
    """The checkpoints of a killed run that this training does not resume: with other params
    or data it could never be resumed by the same job again, so they would stay forever."""
    for run_file in keep.parent.glob("*/mlflow_run.json"):
        if run_file.parent != keep and json.loads(run_file.read_text(encoding="utf-8")).get("run_id") == run_id:
            shutil.rmtree(run_file.parent, ignore_errors=True)


def _start_or_resume_run(params: Params, checkpoints: Path, resume: Path | None):
    """The interrupted run goes on (one MLflow run, one loss curve); otherwise a new one.
    Runs that a killed process left RUNNING on this machine are marked KILLED first."""
    from ..registry.tracking import Tracker, git_info

    tracker = Tracker(params.mlflow)
    run_file = checkpoints / "mlflow_run.json"
    resumed = json.loads(run_file.read_text(encoding="utf-8"))["run_id"] if resume and run_file.is_file() else None
    for run_id in tracker.end_orphans():
        if run_id != resumed:
            print(f"train: MLflow run {run_id} was left RUNNING by a process that is gone: marked KILLED")
            _remove_checkpoints_of(run_id, keep=checkpoints)
    if resumed:
        tracker.client.update_run(resumed, status="RUNNING")
        tracker.claim(resumed)
        tracker.set_tags(resumed, {"resumed": "true"})
        return tracker, resumed
    tags = git_info(params.paths.outputs())
    run_id = tracker.start_run(
        # two workspace runs at one commit must be told apart: the time is in the name
        run_name=tags.get("dvc_exp_name") or f"repro-{tags['git_commit'][:8]}-{time.strftime('%m%d-%H%M%S')}",
        params=params.model_dump(mode="json", exclude={"paths"}),
        tags={**tags, "stage": "train", "model.base": params.model.base},
    )
    tracker.log_datasets(run_id, dataset_inputs(params))
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"run_id": run_id})
    return tracker, run_id


def train_metrics(trainer, result, rows: dict, seconds: float) -> tuple[dict, dict]:
    """(the DVC metrics: what the same params and data always give; everything, for MLflow:
    timings and throughput change from run to run, so they stay out of DVC)."""
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    # The mean training loss is MLflow's only: it averages over the whole schedule, so runs of
    # different lengths or warm-ups are not comparable by it; validation loss is.
    headline = {
        "val_loss": round(float(evals[-1]), 6) if evals else None,
        "steps": int(result.global_step),
    }
    everything = {
        **headline,
        "train_loss": round(float(result.training_loss), 6),
        "final_step_loss": round(float(losses[-1]), 6) if losses else None,
        "processes": int(trainer.args.world_size),  # what the Trainer really ran with
        **rows,
        "trainable_params": int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)),
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": round(float(result.metrics.get("train_samples_per_second", 0.0)), 3),
    }
    return headline, everything


def write_loss_plot(trainer, path: Path) -> None:
    with atomic_open(path) as out:
        out.write("step,loss\n")
        for entry in trainer.state.log_history:
            if "loss" in entry:
                out.write(f"{entry['step']},{entry['loss']}\n")


def run_train(params: Params, check_inputs=lambda: None) -> dict | None:
    """Train and write the stage's outputs; returns every figure it measured (the DVC metrics
    and MLflow's; None on ranks other than 0). `check_inputs` raises when params or inputs changed during training."""
    from transformers import set_seed

    from ..modeling import check_device_support, load_base_model, load_tokenizer
    from .distributed import is_main_process

    splits, cfg = params.paths.split, params.train
    check_device_support(params.model)
    main = is_main_process()
    set_seed(cfg.seed)  # same seed on every rank: identical LoRA initialisation
    train_records = sft_records(splits.train, params.chat.think_in_loss)
    val_records = sft_records(splits.val, params.chat.think_in_loss) if splits.val.exists() else []
    if not train_records:
        raise ValueError(f"{splits.train}: no training rows")
    tokenizer = load_tokenizer(params.model.base)
    model = load_base_model(params.model, for_training=True)
    train_records, too_long, max_length = fit_to_max_length(tokenizer, train_records, cfg.max_length, cfg.too_long)
    val_records, val_too_long, val_max_length = fit_to_max_length(tokenizer, val_records, max_length, cfg.too_long)
    max_length = max(max_length, val_max_length)
    if not train_records:
        raise ValueError(
            f"{splits.train}: every row is longer than train.max_length ({cfg.max_length} tokens); "
            "raise it or set train.too_long: keep"
        )
    rows = {
        "train_rows": len(train_records),
        "val_rows": len(val_records),
        "rows_longer_than_max_length": too_long,
        "val_rows_longer_than_max_length": val_too_long,
        "max_length_used": max_length,
    }

    checkpoints = checkpoint_dir(params)
    resume = checkpoint_to_resume(checkpoints, clean=main)
    if not main:
        trainer = build_trainer(params, model, tokenizer, train_records, val_records, checkpoints, max_length)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        return None
    tracker, run_id = _start_or_resume_run(params, checkpoints, resume)
    try:  # from here on the run ends FINISHED, FAILED (with the error) or KILLED, never RUNNING
        metrics = _train_and_save(
            params,
            model,
            tokenizer,
            train_records,
            val_records,
            checkpoints,
            max_length,
            resume,
            tracker,
            run_id,
            rows,
            check_inputs,
        )
    except (KeyboardInterrupt, SystemExit) as stop:
        tracker.end_run(run_id, "KILLED", stop)
        raise
    except BaseException as error:
        tracker.end_run(run_id, "FAILED", error)
        if not any(checkpoints.glob("checkpoint-*")):  # nothing to resume from: leave nothing behind
            shutil.rmtree(checkpoints, ignore_errors=True)
        raise
    shutil.rmtree(checkpoints, ignore_errors=True)  # done: the adapter is the artifact now
    tracker.end_run(run_id)  # evaluate adds its metrics and the registry version to this run
    return metrics


def _train_and_save(
    params,
    model,
    tokenizer,
    train_records,
    val_records,
    checkpoints,
    max_length,
    resume,
    tracker,
    run_id,
    rows,
    check_inputs,
) -> dict:
    paths = params.paths.train
    trainer = build_trainer(
        params,
        model,
        tokenizer,
        train_records,
        val_records,
        checkpoints,
        max_length,
        callbacks=[tracker.step_callback(run_id)],
    )
    if resume:
        print(f"train: resuming from the last checkpoint, {resume}")
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    check_inputs()  # another run changed params or data meanwhile: write nothing, DVC locks nothing
    save_adapter(trainer, paths.adapter)
    metrics, everything = train_metrics(trainer, result, rows, seconds)
    write_loss_plot(trainer, paths.loss_plot)
    write_json(paths.metrics, metrics)
    # what identifies the run, not where this machine keeps the store: a moved clone stays valid
    write_json(paths.run_info, {"run_id": run_id, "experiment": params.mlflow.experiment})
    tracker.log_metrics(run_id, {k: v for k, v in everything.items() if v is not None})
    tracker.log_artifacts(run_id, paths.adapter, "adapter")
    print(
        f"train: {metrics['steps']} steps on {everything['processes']} process(es), loss {everything['train_loss']}, "
        f"val loss {metrics['val_loss']}, {seconds:.1f}s; adapter in {paths.adapter}; MLflow run {run_id}"
    )
    return everything


def main(params: Params, args) -> None:
    """`train.num_processes > 1` relaunches this command under accelerate; every process
    then comes back here and trains."""
    from ..runtime import keep_freed_memory
    from .distributed import relaunch_if_needed

    relaunch_if_needed(params.train, args.argv)
    keep_freed_memory()
    # SIGTERM (a stopped `dvc exp`, a scheduler) ends the MLflow run as KILLED, not RUNNING
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run_train(params, args.check_inputs)
