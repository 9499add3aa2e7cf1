"""Typed view of params.yaml: validated once, with errors that name the key.

params.yaml is the only place a default lives: every key is required here, so a value is
never silently taken from code. Unknown keys are rejected, so a typo (`lora.rank`) fails
loudly instead of training with something else. Numbers must be finite, names non-empty.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

DEFAULT_PARAMS_PATH = Path("params.yaml")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _inside_repository(key: str, path: Path) -> None:
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{key} '{path}' must be a relative path inside the repository (no leading / and no ..)")


Finite = Annotated[float, AfterValidator(_finite)]
Name = Annotated[str, AfterValidator(_not_blank)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- where each stage reads and writes (dvc.yaml uses the same keys through ${paths.…}) ----


class ExtractPaths(_Section):
    rows: Path
    rejects: Path
    report: Path
    summary: Path


class FilterPaths(_Section):
    kept: Path
    dropped: Path
    summary: Path


class MergePaths(_Section):
    rows: Path
    duplicates: Path
    near_duplicates: Path
    summary: Path


class SplitPaths(_Section):
    train: Path
    val: Path
    test: Path
    leakage: Path
    summary: Path
    data_report: Path
    rows_plot: Path
    lengths_plot: Path


class TrainPaths(_Section):
    adapter: Path
    run_info: Path
    metrics: Path
    loss_plot: Path


class EvaluatePaths(_Section):
    predictions: Path
    report: Path
    metrics: Path
    details: Path
    scores_plot: Path


class Paths(_Section):
    extract: ExtractPaths
    filter: FilterPaths
    merge: MergePaths
    split: SplitPaths
    train: TrainPaths
    evaluate: EvaluatePaths
    cache: Path  # under the repository root: checkpoints and cached base outputs

    @model_validator(mode="after")
    def _inside_the_repository(self) -> Paths:
        """DVC refuses outputs outside the repository; a stage must not write there either."""
        for stage in ("extract", "filter", "merge", "split", "train", "evaluate"):
            for name, path in getattr(self, stage).model_dump().items():
                _inside_repository(f"paths.{stage}.{name}", path)
        _inside_repository("paths.cache", self.cache)
        return self

    def outputs(self) -> list[str]:
        """Every path a stage writes (what `git_dirty` must not count as an edit)."""
        stages = (self.extract, self.filter, self.merge, self.split, self.train, self.evaluate)
        return [str(path) for stage in stages for path in stage.model_dump().values()] + [str(self.cache)]


# ---- one section per stage ----


class DataParams(_Section):
    aihub_dir: Path
    mna_path: Path


class ExtractParams(_Section):
    on_error: Literal["fail", "skip"]


class FilterParams(_Section):
    scorer: Literal["lexicon", "column", "llm"]
    lexicon_path: Path
    scores_path: Path | None  # read only when scorer is `column`
    llm_prompt_path: Path
    llm_cache_path: Path
    llm_concurrency: int = Field(ge=1, le=256)
    llm_timeout_s: Finite = Field(gt=0)
    min_score: Finite = Field(ge=0, le=100)
    exclude_categories: list[str]
    min_question_chars: int = Field(ge=1)
    max_question_chars: int = Field(ge=1)
    min_answer_chars: int = Field(ge=1)
    max_answer_chars: int = Field(ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> FilterParams:
        if self.scorer == "column" and self.scores_path is None:
            raise ValueError("filter.scorer is 'column' but filter.scores_path is not set")
        if self.min_question_chars > self.max_question_chars:
            raise ValueError("filter.min_question_chars is larger than filter.max_question_chars")
        if self.min_answer_chars > self.max_answer_chars:
            raise ValueError("filter.min_answer_chars is larger than filter.max_answer_chars")
        return self


class MergeParams(_Section):
    near_dup_threshold: Finite | None = Field(gt=0, le=1)


class SplitParams(_Section):
    seed: int
    val_size: Finite = Field(ge=0, lt=1)
    test_size: Finite = Field(gt=0, lt=1)
    leakage_threshold: Finite = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitParams:
        if self.val_size + self.test_size >= 1:
            raise ValueError("split.val_size + split.test_size must be below 1")
        return self


class ChatParams(_Section):
    think_in_loss: bool


class ModelParams(_Section):
    base: Name
    tiny_seed: int
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    quantization: Literal["none", "4bit", "8bit"]
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"]


class LoraParams(_Section):
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: Finite = Field(ge=0, lt=1)
    target_modules: list[Name] = Field(min_length=1)


class TrainParams(_Section):
    seed: int
    num_train_epochs: Finite = Field(gt=0)
    max_steps: int
    learning_rate: Finite = Field(gt=0)
    per_device_train_batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(ge=1)
    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "reduce_lr_on_plateau",
        "cosine_with_min_lr",
        "warmup_stable_decay",
    ]
    warmup_ratio: Finite = Field(ge=0, lt=1)
    max_grad_norm: Finite = Field(gt=0)
    weight_decay: Finite = Field(ge=0)
    max_length: int = Field(ge=16)
    too_long: Literal["drop", "keep"]
    packing: bool
    padding_free: bool
    gradient_checkpointing: bool
    num_processes: int = Field(ge=1)
    accelerate_config: Path
    logging_steps: int = Field(ge=1)
    save_steps: int = Field(ge=1)
    save_total_limit: int = Field(ge=1)

    @model_validator(mode="after")
    def _steps(self) -> TrainParams:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("train.max_steps must be -1 (train by epochs) or a positive step cap")
        return self


JUDGE_GATE_METRICS = ("judge_win_rate", "judge_rubric_mean")  # need evaluate.judge.enabled


# Metrics for which a smaller value is the better one (the report and the gate read it).
LOWER_IS_BETTER = {"eval_loss", "perplexity", "think_leak_share", "empty_answer_share"}


ParityPath = Literal["transformers", "vllm", "export", "serve", "serve_vllm", "pyfunc"]


class GateParams(_Section):
    metric: Literal[
        "eval_loss",
        "perplexity",
        "rougeL_f1",
        "chrf",
        "exact_match",
        "korean_only_share",
        "domain_term_recall",
        "domain_term_precision",
        "judge_win_rate",
        "judge_rubric_mean",
    ]
    min_delta: Finite
    min_korean_only: Finite = Field(ge=0, le=1)
    parity: Literal["all"] | list[ParityPath]  # paths that must agree with the reference (evaluation/parity.py)


class ParityParams(_Section):
    test_rows: int = Field(ge=0)  # the first test questions replayed beside the probe's


class ConsistencyParams(_Section):
    samples: int = Field(ge=0, le=64)  # sampled answers per generated row; 0: off, else at least 2

    @model_validator(mode="after")
    def _pairs(self) -> ConsistencyParams:
        if self.samples == 1:
            raise ValueError("evaluate.consistency.samples must be 0 (off) or at least 2: one answer has no pair")
        return self


class JudgeParams(_Section):
    enabled: bool  # endpoint, model and key come from the environment only (MNA_TUNE_JUDGE_*)
    pairwise_prompt_path: Path
    rubric_prompt_path: Path
    concurrency: int = Field(ge=1, le=256)
    timeout_s: Finite = Field(gt=0)
    max_tokens: int = Field(ge=16)


class VllmParams(_Section):
    max_num_seqs: int = Field(ge=1, le=1024)  # sequences the engine batches at once (= requests in flight)
    max_model_len: int = Field(ge=64)  # prompt + answer tokens the engine reserves per sequence
    kv_cache_gib: int = Field(ge=1)  # the CPU engine's KV cache in whole GiB; GPUs size theirs themselves
    startup_timeout_s: Finite = Field(gt=0)


class EvaluateParams(_Section):
    engine: Literal["transformers", "vllm"]
    vllm: VllmParams
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    max_generate_rows: int | None = Field(ge=1)
    do_sample: bool
    temperature: Finite = Field(gt=0)
    top_k: int = Field(ge=1)
    top_p: Finite = Field(gt=0, le=1)
    repetition_penalty: Finite = Field(gt=0)
    report_samples: int = Field(ge=0)
    probes: int = Field(ge=0)
    parity: ParityParams
    consistency: ConsistencyParams
    judge: JudgeParams
    gate: GateParams

    @model_validator(mode="after")
    def _judge_for_gate(self) -> EvaluateParams:
        if self.gate.metric in JUDGE_GATE_METRICS and not self.judge.enabled:
            raise ValueError(f"evaluate.gate.metric is '{self.gate.metric}' but evaluate.judge.enabled is false")
        return self


class MlflowParams(_Section):
    tracking_uri: str  # empty: $MLFLOW_TRACKING_URI, else sqlite:///<repo root>/mlflow.db
    experiment: Name
    registered_model: Name


class Params(_Section):
    paths: Paths
    data: DataParams
    extract: ExtractParams
    filter: FilterParams
    merge: MergeParams
    split: SplitParams
    chat: ChatParams
    model: ModelParams
    lora: LoraParams
    train: TrainParams
    evaluate: EvaluateParams
    mlflow: MlflowParams


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


def load_params(path: Path | str = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"{path}: is a folder, not a params file (--params takes a YAML file such as params.yaml)")
    if path.exists() and not path.is_file():  # a pipe or a device (/dev/zero) would be read without end
        raise ParamsError(f"{path}: is not a regular file (--params takes a YAML file such as params.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (run from the repository root)") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ParamsError(f"{path}: {problems}") from None
