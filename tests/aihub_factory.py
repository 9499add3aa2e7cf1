"""Builds small AI Hub 71748-layout downloads for tests, unzipped or zipped, with known rows."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

SFT_DIR = "Training/02.라벨링데이터/TL_02.RLHF데이터"
VL_DIR = "Validation/02.라벨링데이터/VL"
OTHER_DIR = "Other/Other"
SOURCE_DIR = "Training/01.원천데이터/TS_01.한국어말뭉치데이터_문어체_WL01"


def other_doc(middle: str, *contents: list[tuple[str, str]], main: str = "문어체") -> dict:
    return {
        "data_category": {"main": main, "middle": middle, "sub": ""},
        "contents": [{"text": "본문", "QA": [{"question": q, "answer": a} for q, a in qa]} for qa in contents],
    }


def sft_record(middle: str, question: str, answer: str) -> dict:
    return {
        "data_id": f"sft-{abs(hash(question)) % 10**8}",
        "data_category": {"main": "구어체", "middle": middle},
        "question_type": "생성",
        "question_count": len(question),
        "question": question,
        "answer": {"contents": answer, "answer_count": len(answer)},
    }


def rm_record(middle: str, question: str, answers: list[tuple[str, int]]) -> dict:
    record = {
        "data_id": f"rm-{abs(hash(question)) % 10**8}",
        "data_category": {"main": "구어체", "middle": middle},
        "question_type": "생성",
        "question_count": len(question),
        "question": question,
    }
    for number, (text, rank) in enumerate(answers, start=1):
        record[f"answer{number:02d}"] = {"answer_count": len(text), "ranking": rank, "contents": text}
    return record


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def standard_tree(root: Path) -> dict:
    """A download with one of each unit kind. Returns the QA pairs a reader must find."""
    write_json(
        root / SOURCE_DIR / "WL01-00-01.json",
        {
            "dataset_info": {},
            "data_info": [
                {
                    "data_id": "s1",
                    "contents": "<ul><li>원문</li></ul>",
                    "data_category": {"main": "문어체", "middle": "사회"},
                }
            ],
        },
    )
    write_json(
        root / OTHER_DIR / "OT-1.json",
        [
            other_doc(
                "사회",
                [("합병이란 무엇인가요?", "두 회사가 하나로 합쳐지는 것입니다.")],
                [("공개매수란?", "불특정 다수에게 장외에서 주식을 사겠다고 공고하는 것입니다.")],
            ),
            other_doc("예체능", [("축구 경기는 몇 명이 하나요?", "한 팀에 열한 명입니다.")]),
        ],
    )
    write_json(
        root / SFT_DIR / "SFTlabel.json",
        {
            "data_info": [
                sft_record(
                    "사회",
                    "주주총회 특별결의 요건은?",
                    "출석 주주 의결권의 3분의 2 이상과 발행주식총수의 3분의 1 이상입니다.",
                ),
                sft_record("기타", "안녕하세요 ", "안녕하세요"),  # echo row
            ]
        },
    )
    write_json(
        root / SFT_DIR / "RMlabel.json",
        {
            "data_info": [
                rm_record(
                    "사회",
                    "실사란 무엇인가요?",
                    [("모릅니다.", 3), ("대상 회사를 조사하는 절차입니다.", 1), ("조사", 2), ("회계", 4), ("법", 5)],
                ),
            ]
        },
    )
    write_json(
        root / VL_DIR / "SFTlabel.json",
        {
            "data_info": [
                sft_record("종교", "부활절은 언제인가요?", "춘분 뒤 첫 보름달 다음 일요일입니다."),
            ]
        },
    )
    write_json(
        root / VL_DIR / "RMlabel.json",
        {
            "data_info": [
                rm_record("산업", "배당이란?", [("이익을 주주에게 나누어 주는 것입니다.", 1), ("돈", 2)]),
            ]
        },
    )
    return {
        ("합병이란 무엇인가요?", "두 회사가 하나로 합쳐지는 것입니다."),
        ("공개매수란?", "불특정 다수에게 장외에서 주식을 사겠다고 공고하는 것입니다."),
        ("축구 경기는 몇 명이 하나요?", "한 팀에 열한 명입니다."),
        ("주주총회 특별결의 요건은?", "출석 주주 의결권의 3분의 2 이상과 발행주식총수의 3분의 1 이상입니다."),
        ("안녕하세요 ", "안녕하세요"),
        ("실사란 무엇인가요?", "대상 회사를 조사하는 절차입니다."),
        ("부활절은 언제인가요?", "춘분 뒤 첫 보름달 다음 일요일입니다."),
        ("배당이란?", "이익을 주주에게 나누어 주는 것입니다."),
    }


def zip_folder(folder: Path, remove: bool = True) -> Path:
    """Zip `folder` into `<folder>.zip` the way AI Hub does: entry names with a leading slash."""
    import shutil

    archive = folder.with_name(folder.name + ".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.writestr(zipfile.ZipInfo("/" + path.relative_to(folder).as_posix()), path.read_bytes())
    if remove:
        shutil.rmtree(folder)
    return archive


def zip_every_archive(root: Path) -> list[Path]:
    """Turn every archive folder of the layout (TL_02…, VL, Other, TS_01…) into a zip."""
    folders = [root / SFT_DIR, root / VL_DIR, root / OTHER_DIR, root / SOURCE_DIR]
    return [zip_folder(folder) for folder in folders if folder.is_dir()]
