"""Small train/val/test splits and params for tests that train tiny-qwen3."""

from pathlib import Path

from mna_tune.chat import build_messages
from mna_tune.data.io import write_jsonl
from mna_tune.data.text import content_id
from mna_tune.params import load_params

REPO = Path(__file__).resolve().parents[1]

QA = [
    ("합병이란 무엇인가요?", "두 회사가 하나로 합쳐지는 것입니다."),
    ("공개매수란 무엇인가요?", "장외에서 주식을 사겠다고 공고하는 것입니다."),
    ("실사란 무엇인가요?", "대상 회사를 조사하는 절차입니다."),
    ("영업권이란 무엇인가요?", "인수 대가가 순자산 공정가치를 넘는 부분입니다."),
]


def chat_rows(pairs):
    return [{"id": content_id(q, a), "source": "mna", "category": "M&A", "messages": build_messages(q, a)}
            for q, a in pairs]


def tiny_params(tmp_path, **train):
    params = load_params(REPO / "params.yaml")
    return params.model_copy(update={
        "train": params.train.model_copy(update={"max_steps": 3, "per_device_train_batch_size": 2,
                                                 "gradient_accumulation_steps": 1, **train}),
        "evaluate": params.evaluate.model_copy(update={"max_new_tokens": 8, "batch_size": 4}),
        "filter": params.filter.model_copy(update={"lexicon_path": REPO / "data/lexicon/domain_terms.tsv"}),
    })


def write_splits(root: Path) -> None:
    write_jsonl(root / "data/processed/train.jsonl", chat_rows(QA * 2))
    write_jsonl(root / "data/processed/val.jsonl", chat_rows(QA[:2]))
    write_jsonl(root / "data/processed/test.jsonl", chat_rows(QA[2:]))
