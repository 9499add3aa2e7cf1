"""Which pins of a lock have no wheel for a platform the set-up supports (docs/setup.md).

    .venv/bin/python tools/lock_platforms.py requirements.lock

Asks the package index (PyPI's JSON simple API, PEP 691) for each `name==version` and prints
the pins that would install from an sdist, or not at all, on Linux x86_64, Linux aarch64 or
macOS arm64 under CPython 3.11. Needs the network; not part of the tests.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

INDEX = "https://pypi.org/simple"
PLATFORMS = {
    "linux-x86_64": lambda tag: ("manylinux" in tag or tag.startswith("linux")) and tag.endswith("x86_64"),
    "linux-aarch64": lambda tag: ("manylinux" in tag or tag.startswith("linux")) and tag.endswith("aarch64"),
    "macos-arm64": lambda tag: tag.startswith("macosx") and ("arm64" in tag or "universal2" in tag),
}


def installs_on(tag: Tag, platform: str) -> bool:
    python_ok = (
        tag.interpreter in ("cp311", "py3", "py311") or tag.abi == "abi3" or tag.interpreter.startswith("py2.py3")
    )
    return python_ok and (tag.platform == "any" or PLATFORMS[platform](tag.platform))


def files_of(name: str, version: str) -> list[str]:
    request = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    files = []
    for entry in listing["files"]:
        filename = entry["filename"]
        try:
            parsed = parse_wheel_filename(filename) if filename.endswith(".whl") else parse_sdist_filename(filename)
        except ValueError:
            continue
        if parsed[1] == Version(version):
            files.append(filename)
    return files


def verdicts(pin: str) -> tuple[str, dict[str, str]]:
    name, version = pin.split("==")
    files = files_of(name, version.split("+")[0])
    has_sdist = any(not f.endswith(".whl") for f in files)
    result = {}
    for platform in PLATFORMS:
        wheel = any(
            f.endswith(".whl") and any(installs_on(t, platform) for t in parse_wheel_filename(f)[3]) for f in files
        )
        result[platform] = "wheel" if wheel else "sdist" if has_sdist else "MISSING"
    return pin, result


def main(lock: str) -> int:
    lines = Path(lock).read_text(encoding="utf-8").splitlines()
    pins = [line.strip() for line in lines if "==" in line and not line.startswith("#")]
    missing = 0
    with ThreadPoolExecutor(16) as pool:
        for pin, result in pool.map(verdicts, pins):
            if any(v != "wheel" for v in result.values()):
                print(pin, " ".join(f"{p}={v}" for p, v in result.items()))
                missing += any(v == "MISSING" for v in result.values())
    print(f"{len(pins)} pins checked; {missing} cannot install on some platform")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
