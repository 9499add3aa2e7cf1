"""A hostile round's command-line findings, each one line and exit code 1 or 2, never a
traceback (run through `cli.main`, as the console script runs it)."""

from __future__ import annotations

import os

import pytest
import yaml

from helpers import REPO
from mna_tune.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse refuses with exit 2
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return code, err


def repository_params(tmp_path, **changes) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = params
        for name in sections:
            node = node[name]
        node[key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_a_port_out_of_range_is_one_line(capsys, port):
    code, err = run(capsys, "serve", "--port", port)
    # argparse's usage, then one line (a hostile round got three chained tracebacks)
    assert (
        code == 2
        and err.splitlines()[-1] == f"mna-tune serve: error: argument --port: {port!r} is not a TCP port (1-65535)"
    )


def test_a_params_folder_is_one_line(capsys, tmp_path):
    code, err = run(capsys, "--params", str(tmp_path), "extract")
    assert (
        code == 1
        and err
        == f"mna-tune extract: error: {tmp_path}: is a folder, not a params file "
        "(--params takes a YAML file such as params.yaml)"
    )


def test_a_params_file_that_is_not_utf8_is_named(capsys, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("data:\n  aihub_dir: r\xe9sum\xe9\n".encode("latin-1"))
    code, err = run(capsys, "--params", str(tmp_path / "latin1.yaml"), "extract")
    assert code == 1 and f"{tmp_path / 'latin1.yaml'}: not UTF-8 text" in err


@pytest.mark.parametrize("outside", ["../../outside.parquet", "/tmp/outside.parquet"])
def test_an_output_path_outside_the_repository_is_refused_naming_the_key(capsys, tmp_path, monkeypatch, outside):
    monkeypatch.chdir(tmp_path)
    repository_params(tmp_path, **{"paths.extract.rows": outside})
    code, err = run(capsys, "extract")
    assert code == 1 and f"paths.extract.rows '{outside}' must be a relative path inside the repository" in err
    assert not (tmp_path.parent.parent / "outside.parquet").exists()


def test_an_mna_path_that_is_a_device_is_one_line_not_an_endless_read(capsys, tmp_path, monkeypatch):
    from mna_tune.data.mna import read_mna
    from mna_tune.errors import InputError

    os.symlink("/dev/zero", tmp_path / "mna_qa.json")
    with pytest.raises(InputError, match="is not a regular file"):
        read_mna(tmp_path / "mna_qa.json")


@pytest.mark.parametrize("question", ["", "   ", "\n", "\u200b\u200b", "\ufeff \u3164"])
def test_an_empty_question_is_refused(capsys, question):
    code, err = run(capsys, "ask", question)
    assert code == 1 and "the question is empty" in err


def test_help_ends_with_a_whole_sentence(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "and per user tool." in " ".join(capsys.readouterr().out.split())


def test_a_busy_port_is_one_line_before_anything_loads(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run(capsys, "serve", "--port", str(port))
    assert code == 1 and f"cannot serve on 127.0.0.1:{port}: Address already in use" in err


def test_params_that_are_a_device_are_one_line_not_an_endless_read(capsys, tmp_path):
    os.symlink("/dev/zero", tmp_path / "params.yaml")
    for argv in (["--params", "/dev/zero", "extract"], ["--params", str(tmp_path / "params.yaml"), "audit", "1"]):
        code, err = run(capsys, *argv)
        assert code == 1 and "is not a regular file" in err, argv


def test_audit_data_that_is_a_device_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repository_params(tmp_path)
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "folder" / "pipe.json")
    for path in ("/dev/zero", "folder"):
        code, err = run(capsys, "audit", "--data", path)
        assert code == 1 and "not a regular file or folder" in err, path


def test_a_pipe_in_the_aihub_folder_is_named_not_read(tmp_path):
    from mna_tune.data.aihub_layout import iter_units
    from mna_tune.errors import InputError

    (tmp_path / "Other").mkdir()
    os.mkfifo(tmp_path / "Other" / "stuck.json")
    os.symlink("/dev/zero", tmp_path / "Other" / "zero.json")
    found = list(iter_units(tmp_path, []))
    assert all(isinstance(item, InputError) and "not a regular file" in str(item) for item in found) and len(found) == 2


def test_lexicon_scores_and_prompt_files_that_are_devices_are_named(tmp_path):
    from mna_tune.data.llm_scorer import load_template
    from mna_tune.data.scoring import ColumnScorer
    from mna_tune.errors import InputError
    from mna_tune.evaluation.judge import load_template as judge_template
    from mna_tune.lexicon import Lexicon

    os.symlink("/dev/zero", tmp_path / "zero")
    for read, key in (
        (Lexicon.from_tsv, "filter.lexicon_path"),
        (ColumnScorer.from_csv, "filter.scores_path"),
        (load_template, "filter.llm_prompt_path"),
        (lambda path: judge_template(path, "pairwise"), "evaluate.judge.pairwise_prompt_path"),
    ):
        with pytest.raises(InputError, match=f"not a regular file .*{key}"):
            read(tmp_path / "zero")
