"""Typed view of params.yaml: validated once, with errors that name the key.

Every stage reads its own section through `load_params`; unknown keys are rejected so a
typo (`lora.rank`) fails loudly instead of silently training with the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS_PATH = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatParams(_Section):
    # Train on the empty <think></think> block too (true), or keep it masked (false).
    think_in_loss: bool = False


class DataParams(_Section):
    aihub_dir: Path
    mna_path: Path


class ExtractParams(_Section):
    on_error: Literal["fail", "skip"] = "fail"


class FilterParams(_Section):
    scorer: Literal["lexicon", "column", "llm"] = "lexicon"
    lexicon_path: Path = Path("data/lexicon/domain_terms.tsv")
    # CSV with question, answer, score[, reason]; read only when scorer is `column`.
    scores_path: Path | None = None
    # scorer `llm`: an OpenAI-compatible endpoint (MNA_TUNE_LLM_BASE_URL, MNA_TUNE_LLM_MODEL,
    # MNA_TUNE_LLM_API_KEY in the environment, never in params or logs) scores each row with
    # this prompt; scores are cached by content hash so reruns only score new rows.
    llm_prompt_path: Path = Path("prompts/llm_relevance.txt")
    llm_cache_path: Path = Path(".cache/llm_scores.jsonl")
    llm_concurrency: int = Field(8, ge=1, le=256)
    llm_timeout_s: float = Field(60, gt=0)
    min_score: float = Field(0, ge=0, le=100)
    exclude_categories: list[str] = Field(default_factory=lambda: ["예체능", "종교", "보건"])
    min_question_chars: int = Field(1, ge=1)
    max_question_chars: int = Field(2000, ge=1)
    min_answer_chars: int = Field(1, ge=1)
    max_answer_chars: int = Field(4000, ge=1)

    @model_validator(mode="after")
    def _column_needs_csv(self) -> "FilterParams":
        if self.scorer == "column" and self.scores_path is None:
            raise ValueError("filter.scorer is 'column' but filter.scores_path is not set")
        if self.min_question_chars > self.max_question_chars:
            raise ValueError("filter.min_question_chars is larger than filter.max_question_chars")
        if self.min_answer_chars > self.max_answer_chars:
            raise ValueError("filter.min_answer_chars is larger than filter.max_answer_chars")
        return self


class MergeParams(_Section):
    # Rows whose questions are at least this similar (cosine of character 2-3-grams) are
    # collapsed to the first (M&A before AI Hub); null keeps near-duplicates. Exact
    # duplicates are always removed.
    near_dup_threshold: float | None = Field(0.9, gt=0, le=1)


class SplitParams(_Section):
    seed: int = 42
    val_size: float = Field(0.1, ge=0, lt=1)
    test_size: float = Field(0.1, gt=0, lt=1)
    # Questions at least this similar are near-twins: they always share a split, and the
    # leakage report counts val/test questions whose nearest train question reaches it.
    leakage_threshold: float = Field(0.8, gt=0, le=1)

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> "SplitParams":
        if self.val_size + self.test_size >= 1:
            raise ValueError("split.val_size + split.test_size must be below 1")
        return self


class ModelParams(_Section):
    # `tiny-qwen3`, a hub id (`Qwen/Qwen3-8B`) or a local folder.
    base: str = "tiny-qwen3"
    # Seed of the tiny model's random initialisation (ignored for real models).
    tiny_seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # CUDA only (bitsandbytes): 4bit = nf4 + double quantisation + bf16 compute (QLoRA).
    quantization: Literal["none", "4bit", "8bit"] = "none"
    # flash_attention_2 needs CUDA and the flash-attn package.
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    @field_validator("base")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model.base is empty")
        return value.strip()


class LoraParams(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainParams(_Section):
    seed: int = 42
    num_train_epochs: float = Field(1, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(1e-4, gt=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(2, ge=1)
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_grad_norm: float = Field(0.3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(384, ge=16)
    # Rows longer than max_length: `drop` them, or `keep` them whole (the cap rises to the
    # longest row). Either way they are counted; none is ever cut short.
    too_long: Literal["drop", "keep"] = "drop"
    # TRL best-fit-decreasing packing: rows share sequences of max_length tokens; each row
    # keeps its own positions and attention (no row sees another) and its answer-only labels.
    packing: bool = False
    # Without packing: a batch is its rows laid end to end, no pad tokens (implied by packing).
    padding_free: bool = False
    # Recompute activations in backward: saves memory on an 8B model, only costs time on tiny-qwen3.
    gradient_checkpointing: bool = False
    # >1: the train stage relaunches itself under `accelerate launch` with this many processes
    # (DDP over NCCL on GPUs, gloo on CPU); global batch = processes x batch x accumulation.
    num_processes: int = Field(1, ge=1)
    # accelerate config used when num_processes > 1 (configs/accelerate has DDP, FSDP and ZeRO files).
    accelerate_config: Path = Path("configs/accelerate/ddp.yaml")
    logging_steps: int = Field(1, ge=1)
    # Checkpoints for resuming an interrupted run (kept under .cache/checkpoints, newest N).
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("train.max_steps must be -1 (train by epochs) or a positive step cap")
        return value


class GateParams(_Section):
    # Metric that must improve over the current champion (over the base model when there is none).
    metric: Literal["eval_loss", "perplexity", "rougeL_f1", "chrf", "exact_match", "korean_only_share",
                    "domain_term_recall"] = "rougeL_f1"
    min_delta: float = 0.0
    min_korean_only: float = Field(0.9, ge=0, le=1)


class EvaluateParams(_Section):
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    # Cap on test rows to generate for (null: all). Eval loss always covers every test row.
    max_generate_rows: int | None = Field(None, ge=1)
    # Greedy by default; the original notebook sampled with temperature 0.1, top-k 2,
    # top-p 0.95 and repetition penalty 1.2.
    do_sample: bool = False
    temperature: float = Field(0.1, gt=0)
    top_k: int = Field(2, ge=1)
    top_p: float = Field(0.95, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    report_samples: int = Field(5, ge=0)
    gate: GateParams = GateParams()


class MlflowParams(_Section):
    # Empty: the repository's own sqlite:///<repo root>/mlflow.db.
    tracking_uri: str = ""
    experiment: str = "mna-tune"
    registered_model: str = "mna-tune-qwen3-adapter"


class Params(_Section):
    data: DataParams
    extract: ExtractParams = ExtractParams()
    filter: FilterParams = FilterParams()
    merge: MergeParams = MergeParams()
    split: SplitParams = SplitParams()
    chat: ChatParams = ChatParams()
    model: ModelParams = ModelParams()
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


def load_params(path: Path | str = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ParamsError(f"{path}: {problems}") from None
