"""The workspace: where the repository is (also from inside `dvc exp run --temp/--queue`
copies), and how every stage reads and writes its files (atomic writes, JSON Lines, md5)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson


def project_root() -> Path:
    """DVC_ROOT when DVC sets it (temporary experiment copies live under .dvc/tmp/exps),
    else the nearest folder holding .dvc, else the current folder."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temps(path: Path | str) -> list[Path]:
    """Remove the temp files a killed writer of `path` left beside it: `.<name>.<pid>.<random>.tmp`
    whose process is gone, and `.<name>.<random>.tmp` of the older naming (no pid; no live writer
    uses it any more). A temp file of a live process (another run writing now) is left alone.
    Returns what was removed."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    with contextlib.suppress(FileNotFoundError):
        for sibling in path.parent.iterdir():
            name = sibling.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            middle = name[len(prefix) : -len(".tmp")].split(".")
            if len(middle) == 2 and middle[0].isdigit() and _pid_alive(int(middle[0])):
                continue
            if len(middle) > 2:  # another output's temp (`.<name>.<more>.<pid>.<random>.tmp`)
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                sibling.unlink()
                removed.append(sibling)
    return removed


def file_mode() -> int:
    """The mode a plain open() gives a new file: 0o666 minus the umask (mkstemp's temp files are
    0600, which would hide every output from teammates and from a shared DVC cache)."""
    try:  # Linux: read the umask without changing it (os.umask would, for a moment, for every thread)
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Umask:"))
        umask = int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def temp_beside(path: Path) -> str:
    """A new temp file beside `path`, named after it and this process (so the next run can tell a
    killed writer's leftovers from a live one's), after removing stale ones. Returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    return tmp


def commit_temp(tmp: str, path: Path) -> None:
    """Give the finished temp file a normal file's mode and rename it into place."""
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temp file beside `path` and rename it into place only on success,
    so a failed stage never leaves a half-written output behind (and the next run removes what
    a killed one left). The file gets the mode a plain open() would give it."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        commit_temp(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class MissingInput(ValueError):
    """A stage's input file is missing or is a folder (the CLI prints it as one line)."""


def require_input(path: Path | str, stage: str | None = None, what: str = "input") -> Path:
    """`path` if it is a file; else MissingInput, in one line: what is missing and, for another
    stage's output, which stage to run."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise MissingInput(f"{path}: is a folder, expected a file ({what})")
    hint = f"; run the {stage} stage first (dvc repro {stage})" if stage else ""
    raise MissingInput(f"{path}: not found ({what}){hint}")


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2, sort_keys=False)
        handle.write("\n")


def dumps_line(obj: Any) -> str:
    # orjson: the same compact UTF-8 JSON as json.dumps(ensure_ascii=False), several times faster
    return orjson.dumps(obj).decode("utf-8") + "\n"


def write_jsonl(path: Path | str, rows: Iterable[Any]) -> int:
    count = 0
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(dumps_line(row))
            count += 1
    return count


def read_jsonl(path: Path | str) -> Iterator[dict]:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON line: {exc}") from None


def file_md5(path: Path | str) -> str:
    """Plain md5 of a file's bytes: the same value DVC 3 records in dvc.lock for a file."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- a stage's inputs must not change under it ----


class StageInputsChanged(ValueError):
    """params.yaml or a dependency of the running stage changed while it ran."""


_REFERENCE = re.compile(r"\$\{([\w.]+)\}")


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def stage_inputs(stage: str, params_path: Path | str = "params.yaml", dvc_yaml: Path | str = "dvc.yaml") -> dict:
    """What DVC will record for `stage` when it ends: the values of the params keys it declares,
    and the size and modification time of every file among its deps (a writer changes the
    mtime, and stat is cheap even for a large download). Empty outside a DVC project."""
    import yaml

    if not Path(dvc_yaml).is_file() or not Path(params_path).is_file():
        return {}
    spec = (yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage, {})
    values = yaml.safe_load(Path(params_path).read_text(encoding="utf-8")) or {}
    inputs = {f"params {key}": _lookup(values, key) for key in spec.get("params", [])}
    for dep in spec.get("deps", []):
        path = Path(_REFERENCE.sub(lambda found: str(_lookup(values, found.group(1))), dep))
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
        for file in files:
            if "__pycache__" not in file.parts:
                stat = file.stat()
                inputs[str(file)] = (stat.st_size, stat.st_mtime_ns)
    return inputs


def _first_changed_leaf(key: str, old: dict, new: dict) -> str:
    """`params train` -> `params train.learning_rate`: the first key whose value differs."""
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            if isinstance(old.get(name), dict) and isinstance(new.get(name), dict):
                return _first_changed_leaf(f"{key}.{name}", old[name], new[name])
            return f"{key}.{name}"
    return key


def _leaf_values(inputs: dict, dotted_key: str) -> dict:
    """inputs with the value of a dotted params key (`params train.learning_rate`) added."""
    name, _, path = dotted_key.partition(" ")
    section, _, rest = path.partition(".")
    value = inputs.get(f"{name} {section}")
    for part in rest.split(".") if rest else []:
        value = value.get(part) if isinstance(value, dict) else None
    return {**inputs, dotted_key: value}


def check_stage_inputs(stage: str, before: dict, params_path: Path | str = "params.yaml") -> None:
    """Fail in one line when params or deps changed since `before` (another run in this
    workspace): DVC then writes no lock for this stage and nothing is registered."""
    after = stage_inputs(stage, params_path)
    changed = [key for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    if changed and changed[0].startswith("params ") and isinstance(before.get(changed[0]), dict):
        changed[0] = _first_changed_leaf(changed[0], before[changed[0]], after.get(changed[0]) or {})
        before, after = _leaf_values(before, changed[0]), _leaf_values(after, changed[0])
    if changed:
        what = (
            changed[0]
            if not changed[0].startswith("params ")
            else f"{changed[0]} ({before.get(changed[0])!r} -> {after.get(changed[0])!r})"
        )
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise StageInputsChanged(
            f"{what}{more} changed while the {stage} stage ran: another run is using this workspace. Nothing was "
            "recorded for this stage; run experiments side by side with `dvc exp run --queue` or `--temp`"
        )


# ---- no second experiment may start in this workspace while a stage runs ----

HOLD_ATTEMPTS = 10  # one a second: another DVC command holds the stash only for a moment


def _dvc_root_of(folder: Path) -> Path | None:
    for candidate in (folder, *folder.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


def _hardlink_lock(root: Path) -> bool:
    import configparser

    config = configparser.ConfigParser()
    config.read([root / ".dvc/config", root / ".dvc/config.local"], encoding="utf-8")
    return config.get("core", "hardlink_lock", fallback="false").strip().strip("'\"").lower() == "true"


@contextlib.contextmanager
def workspace_held(stage: str) -> Iterator[None]:
    """While a stage runs, hold DVC's experiment lock on this workspace's experiment stash.
    A second `dvc exp run` (or `--temp`) started here meanwhile is then refused by DVC
    before it writes its -S values into params.yaml, which would otherwise stop this stage
    (the input guard) and leave params that no run used; `dvc exp run --queue` and `dvc
    queue start` stay possible. Inside `--temp`/`--queue` copies it is the copy's own lock
    (the folder the stage runs in, not DVC_ROOT). Outside a DVC project: nothing."""
    root = _dvc_root_of(Path.cwd().resolve())
    if root is None or "LOCAL_RANK" in os.environ:  # ranks of a multi-process train: their launcher holds it
        yield
        return
    import time

    from dvc.fs import localfs
    from dvc.lock import LockError
    from dvc.repo.experiments.refs import WORKSPACE_STASH
    from dvc.rwlock import rwlock

    folder = root / ".dvc" / "tmp" / "exps"  # where `dvc exp` keeps its rwlock
    folder.mkdir(parents=True, exist_ok=True)
    holder = (
        f"mna-tune {stage}: a stage is running in this workspace; queue other experiments with "
        "`dvc exp run --queue`, or start them when it ends"
    )
    with contextlib.ExitStack() as stack:
        for attempt in range(HOLD_ATTEMPTS):
            try:
                stack.enter_context(rwlock(str(folder), localfs, holder, [], [WORKSPACE_STASH], _hardlink_lock(root)))
                break
            except LockError as busy:
                if attempt == HOLD_ATTEMPTS - 1:
                    raise StageInputsChanged(
                        f"the {stage} stage cannot start: another DVC experiment command "
                        f"holds this workspace ({' '.join(str(busy).split())})"
                    ) from None
                time.sleep(1)
        yield
