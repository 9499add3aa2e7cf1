"""Lineage questions, both directions, answered with content hashes:

- `audit <version | @alias>`: which code, params and data made this adapter, and does the
  workspace still hold that data?
- `audit --data <path>`: which adapter versions were trained on exactly this content?
"""

from __future__ import annotations

import json
import subprocess

from ..params import Params
from .lineage import parse_lineage_tag, workspace_md5
from .registry import ADAPTER_MD5, Registry
from .tracking import Tracker


def _head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def audit_version(tracker: Tracker, registry: Registry, ref: str) -> dict:
    version = registry.version(ref)
    tags = version.tags
    run = tracker.run(version.run_id)
    rows = {d["path"]: d["rows"] for d in tracker.run_datasets(version.run_id)}
    data = []
    for key, md5 in sorted(tags.items()):
        parsed = parse_lineage_tag(key)
        if parsed is None:
            continue
        stage, path = parsed
        now = workspace_md5(path)
        data.append(
            {
                "stage": stage,
                "path": path,
                "md5": md5,
                "rows": rows.get(path),
                "workspace_md5": now,
                "workspace_matches": now == md5,
            }
        )
    head = _head()
    return {
        "model": version.name,
        "version": str(version.version),
        "aliases": list(version.aliases),
        "run_id": version.run_id,
        "run_name": run.info.run_name,
        "source": version.source,
        "code": {
            "git_commit": tags.get("git_commit"),
            "git_dirty": tags.get("git_dirty"),
            "dirty_files": run.data.tags.get("git_dirty_files"),
            "workspace_head": head,
            "workspace_matches": head == tags.get("git_commit"),
        },
        "params": dict(sorted(run.data.params.items())),
        "data": data,
        "lineage_verified": tags.get("lineage.verified"),
        "metrics": {
            key.removeprefix("eval/").replace("/", "."): value
            for key, value in sorted(run.data.metrics.items())
            if key.startswith("eval/")
        },
        "gate": {key.removeprefix("gate."): value for key, value in tags.items() if key.startswith("gate.")},
        "manual_promotion": tags.get("promotion.manual"),
        "adapter_md5": tags.get(ADAPTER_MD5),
        "parity": {
            key.removeprefix("parity."): value for key, value in sorted(tags.items()) if key.startswith("parity.")
        },
        "record": [{"at": at, "what": what} for at, what in registry.records(version)],
        "workspace_matches": all(item["workspace_matches"] for item in data) and bool(data),
    }


def versions_trained_on(registry: Registry, path: str) -> dict:
    md5 = workspace_md5(path)
    if md5 is None:
        raise ValueError(f"{path}: no such file or folder")
    matches = []
    for version in registry.all_versions():
        hits = [key for key, value in version.tags.items() if parse_lineage_tag(key) and value == md5]
        if hits:  # a search result carries no aliases: ask for the version itself
            aliases = list(registry.version(version.version).aliases)
            matches.append(
                {"version": str(version.version), "aliases": aliases, "run_id": version.run_id, "matched": sorted(hits)}
            )
    return {"path": path, "md5": md5, "versions": matches}


def _mark(ok: bool) -> str:
    return "matches" if ok else "CHANGED"


def format_version(report: dict) -> str:
    code = report["code"]
    lines = [
        f"{report['model']} v{report['version']}  aliases: {', '.join(report['aliases']) or '-'}  "
        f"run: {report['run_name']} ({report['run_id']})",
        f"code     commit {code['git_commit']} (dirty: {code['git_dirty']}); workspace HEAD {code['workspace_head']}"
        f" -> {_mark(code['workspace_matches'])}",
    ]
    if code.get("dirty_files"):
        lines.append(f"         uncommitted when trained: {code['dirty_files']}")
    lines.append(f"adapter  md5 {report.get('adapter_md5') or '?'}")
    lines.append(f"data     (lineage verified at evaluation: {report['lineage_verified']})")
    for item in report["data"]:
        rows = f"{item['rows']} rows" if item["rows"] is not None else "rows ?"
        now = "missing" if item["workspace_md5"] is None else _mark(item["workspace_matches"])
        detail = "" if item["workspace_matches"] else f" (now {item['workspace_md5']})"
        lines.append(f"  {item['stage']:<8} {item['path']}  md5 {item['md5']}  {rows}  workspace: {now}{detail}")
    sections: dict[str, list[str]] = {}
    for key, value in report["params"].items():  # one line per params section, not one line of thousands
        section, _, rest = key.partition(".")
        sections.setdefault(section, []).append(f"{rest or section}={value}")
    for number, (section, values) in enumerate(sections.items()):
        lines.append(f"{'params' if number == 0 else '':<8} {section}: " + " ".join(values))
    lines.append(
        "metrics  "
        + " ".join(f"{k}={v:g}" for k, v in report["metrics"].items() if k.startswith(("adapter.", "base.")))
    )
    if report["gate"]:
        lines.append(f"gate     passed={report['gate'].get('passed')}: {report['gate'].get('reason')}")
    for number, (path, line) in enumerate(report.get("parity", {}).items()):  # the parity certificate
        lines.append(f"{'parity' if number == 0 else '':<8} {path}: {line}")
    if report.get("manual_promotion"):
        lines.append(f"promoted by hand {report['manual_promotion']}")
    for number, item in enumerate(report.get("record", [])):  # oldest first, never rewritten
        lines.append(f"{'record' if number == 0 else '':<8} {item['at']}  {item['what']}")
    lines.append(
        f"verdict  the workspace {'still holds' if report['workspace_matches'] else 'does NOT hold'} "
        "the data this version was made from"
    )
    return "\n".join(lines)


def format_data(report: dict) -> str:
    lines = [f"{report['path']}  md5 {report['md5']}"]
    if not report["versions"]:
        lines.append("  no registered version was made from exactly this content")
    for item in report["versions"]:
        lines.append(
            f"  v{item['version']}  aliases: {', '.join(item['aliases']) or '-'}  run {item['run_id']}  "
            f"({', '.join(item['matched'])})"
        )
    return "\n".join(lines)


def run_audit(tracker: Tracker, registry: Registry, ref: str | None, data_path: str | None, as_json: bool) -> str:
    if (ref is None) == (data_path is None):
        raise ValueError("audit needs a version (7 or @champion) or --data PATH, not both")
    if ref is not None:
        report = audit_version(tracker, registry, ref)
    else:
        assert data_path is not None  # one of the two, checked above
        report = versions_trained_on(registry, data_path)
    if as_json:
        return json.dumps(report, ensure_ascii=False, indent=2)
    return format_version(report) if ref is not None else format_data(report)


def main(params: Params, args) -> None:
    print(run_audit(Tracker(params.mlflow), Registry(params.mlflow), args.version, args.data, args.json))
