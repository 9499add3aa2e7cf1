"""Writes a synthetic AI Hub 71748-layout download of N QA rows (zipped, as downloaded).

    .venv/bin/python benchmarks/make_aihub.py --rows 1000000 --out /tmp/aihub-1m
    .venv/bin/python benchmarks/make_aihub.py --rows 1000000 --case templated --out /tmp/aihub-1m-templated

Shares follow the original download: ~95.8 % of rows in Other/Other.zip (entries of about
8,300 rows, as the notebook's 978,172 rows from 118 entries), ~3.7 % in the Training
TL_02 archive (SFT and RM labels), ~0.5 % in Validation VL.zip; one non-QA source archive.
Categories follow the seen mix, ~13 % in the excluded ones (the original 1,013,422 ->
883,254). Seeded: the same N and case give the same bytes.

Cases (the text of the rows):
- diverse (default): random Korean words from a 20,000-word vocabulary with realistic
  lengths (questions ~15-80 characters, answers ~30-300); about 2 % of rows carry
  M&A/finance/law terms from the lexicon, so the default filter keeps a realistic small share.
- templated: every question is built from a 300-word vocabulary (60 lexicon terms, 240
  Korean words): one high-weight domain term (>= 30, so the default filter keeps the row),
  4-6 vocabulary words and one of five endings; answers are 10-25 vocabulary words. 30 % of
  the rows repeat one of 3,000 such questions (an FAQ asked again, with a new answer). Every
  n-gram is common, the case that makes an exact pair search compare ~10^11 pairs, and
  nearly every row reaches merge and split.
"""

from __future__ import annotations

import argparse
import json
import random
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = {"인문": 16, "사회": 22, "자연": 12, "공학": 12, "산업": 11, "기타": 14, "보건": 6, "예체능": 4, "종교": 3}
ROWS_PER_ENTRY = 8300
DOC_ROWS = 30


def _words(rng: random.Random) -> list[str]:
    syllables = [chr(code) for code in range(0xAC00, 0xD7A4, 7)]  # 1,596 Hangul syllables
    return ["".join(rng.choices(syllables, k=rng.choice((1, 2, 2, 3, 3, 4)))) for _ in range(20000)]


class TextMaker:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.words = _words(self.rng)
        lexicon = (REPO / "data/lexicon/domain_terms.tsv").read_text(encoding="utf-8").splitlines()
        self.terms = [line.split("\t")[0] for line in lexicon if line.strip() and not line.startswith("#")]

    def sentence(self, low: int, high: int, domain: bool, end: str) -> str:
        rng = self.rng
        target = rng.randint(low, high)
        parts: list[str] = []
        length = 0
        while length < target:
            word = rng.choice(self.terms) if domain and rng.random() < 0.25 else rng.choice(self.words)
            parts.append(word)
            length += len(word) + 1
        return " ".join(parts) + end

    def qa(self) -> tuple[str, str, str]:
        domain = self.rng.random() < 0.02
        category = self.rng.choices(list(CATEGORIES), weights=list(CATEGORIES.values()))[0]
        question = self.sentence(15, 80, domain, "은 무엇인가요?")
        answer = self.sentence(30, 300, domain, "입니다.")
        return question, answer, category


class TemplatedMaker(TextMaker):
    """Questions and answers from a 300-word vocabulary (see the module docstring)."""

    ENDINGS = (
        "은 무엇인가요?",
        "의 요건은 무엇인가요?",
        "에 대해 설명해 주세요.",
        "의 절차는 어떻게 되나요?",
        "과 관련된 쟁점은?",
    )

    def __init__(self, seed: int):
        super().__init__(seed)
        rng = self.rng
        lexicon = (REPO / "data/lexicon/domain_terms.tsv").read_text(encoding="utf-8").splitlines()
        weights = {
            line.split("\t")[0]: int(line.split("\t")[1])
            for line in lexicon
            if line.strip() and not line.startswith("#")
        }
        terms = sorted(term for term in weights if " " not in term)
        self.strong = [term for term in terms if weights[term] >= 30]
        self.vocabulary = rng.sample(terms, 60) + rng.sample(self.words, 240)
        self.faq = [self.question() for _ in range(3000)]

    def question(self) -> str:
        rng = self.rng
        words = [rng.choice(self.strong)] + rng.sample(self.vocabulary, rng.randint(4, 6))
        rng.shuffle(words)
        return " ".join(words) + rng.choice(self.ENDINGS)

    def qa(self) -> tuple[str, str, str]:
        rng = self.rng
        category = rng.choices(list(CATEGORIES), weights=list(CATEGORIES.values()))[0]
        question = rng.choice(self.faq) if rng.random() < 0.3 else self.question()
        answer = " ".join(rng.choices(self.vocabulary, k=rng.randint(10, 25))) + "입니다."
        return question, answer, category


def other_entry(maker: TextMaker, rows: int) -> list[dict]:
    """Documents of up to 30 QA rows in contents[0] (where the notebook found them); every
    20th document carries 10 of its rows in a second contents item."""
    docs = []
    while rows > 0:
        count = min(rows, DOC_ROWS)
        qas = [maker.qa() for _ in range(count)]
        items = [{"question": q, "answer": a} for q, a, _ in qas]
        split = count - 10 if len(docs) % 20 == 19 and count > 10 else count
        contents = [{"text": "본문", "QA": items[:split]}] + (
            [{"text": "본문", "QA": items[split:]}] if split < count else []
        )
        docs.append({"data_category": {"main": "문어체", "middle": qas[0][2], "sub": ""}, "contents": contents})
        rows -= count
    return docs


def label_files(maker: TextMaker, rows: int, prefix: str) -> dict[str, dict]:
    sft, rm = [], []
    for index in range(rows):
        question, answer, category = maker.qa()
        header = {
            "data_id": f"{prefix}-{index}",
            "data_category": {"main": "구어체", "middle": category},
            "question_type": "생성",
            "question_count": len(question),
            "question": question,
        }
        if index % 3:
            sft.append({**header, "answer": {"contents": answer, "answer_count": len(answer)}})
            continue
        ranks = maker.rng.sample(range(1, 6), 5)
        answers = {
            f"answer{n:02d}": {
                "answer_count": len(answer),
                "ranking": rank,
                "contents": answer if rank == 1 else maker.sentence(30, 200, False, "."),
            }
            for n, rank in enumerate(ranks, start=1)
        }
        rm.append({**header, **answers})
    return {"/SFTlabel.json": {"data_info": sft}, "/RMlabel.json": {"data_info": rm}}


def write_zip(path: Path, entries: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, obj in entries.items():
            archive.writestr(name, json.dumps(obj, ensure_ascii=False))


CASES = {"diverse": TextMaker, "templated": TemplatedMaker}


def make_download(rows: int, out: Path, seed: int = 0, case: str = "diverse") -> dict[str, int]:
    maker = CASES[case](seed)
    training, validation = round(rows * 0.037), round(rows * 0.005)
    other = rows - training - validation
    write_zip(out / "Training/02.라벨링데이터/TL_02.RLHF데이터.zip", label_files(maker, training, "tl"))
    write_zip(out / "Validation/02.라벨링데이터/VL.zip", label_files(maker, validation, "vl"))
    write_zip(
        out / "Training/01.원천데이터/TS_01.한국어말뭉치데이터_문어체_WL01.zip",
        {
            "/WL01-00-01.json": {
                "dataset_info": {},
                "data_info": [
                    {"data_id": "s1", "contents": "<p>원문</p>", "data_category": {"main": "문어체", "middle": "사회"}}
                ],
            }
        },
    )
    path = out / "Other/Other.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        left, number = other, 0
        while left > 0:  # one entry at a time: the generator's memory stays small too
            count = min(left, ROWS_PER_ENTRY)
            archive.writestr(
                f"/OT-{number // 100:02d}-{number % 100:02d}.json",
                json.dumps(other_entry(maker, count), ensure_ascii=False),
            )
            left, number = left - count, number + 1
    return {"other": other, "training": training, "validation": validation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", choices=sorted(CASES), default="diverse")
    args = parser.parse_args()
    print(make_download(args.rows, args.out, args.seed, args.case))


if __name__ == "__main__":
    main()
