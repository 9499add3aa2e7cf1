from mna_tune.registry.lineage import lineage_from_lock, parse_lineage_tag, workspace_md5
from mna_tune.workspace import file_md5


def test_workspace_md5_is_dvcs_hash(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text("[1]")
    (tmp_path / "f.json").write_text("{}")
    assert workspace_md5(tmp_path / "f.json") == file_md5(tmp_path / "f.json")
    folder = workspace_md5(tmp_path / "d")
    assert folder.endswith(".dir")
    (tmp_path / "d" / "a.json").write_text("[2]")
    assert workspace_md5(tmp_path / "d") != folder
    assert workspace_md5(tmp_path / "missing") is None


def test_lineage_tags_from_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  split:\n    deps: []\n    outs:\n"
        "    - path: data/processed/train.jsonl\n      hash: md5\n      md5: abc\n",
        encoding="utf-8",
    )
    assert lineage_from_lock(lock, {"split": ["data/processed/train.jsonl", "x"]}) == {
        "lineage.split.data/processed/train.jsonl": "abc"
    }
    assert lineage_from_lock(tmp_path / "none.lock", {"split": ["x"]}) == {}
    assert parse_lineage_tag("lineage.split.data/processed/train.jsonl") == ("split", "data/processed/train.jsonl")
    assert parse_lineage_tag("lineage.verified") is None and parse_lineage_tag("git_commit") is None
