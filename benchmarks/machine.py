"""What a benchmark result must say about where and how it was produced: machine, software, command.

Both harnesses (bench_kernels.py, train_to_psnr.py) store these dictionaries in their JSON, so that a number in
benchmarks/results/ can always be traced to the hardware, the versions and the exact command line behind it.
Nothing here runs at import; every probe tolerates a missing tool (no GPU, no CuPy, no nvcc, no git).
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def available_cores() -> int:
    """Cores this process may use (the affinity mask of a container or taskset), not those of the whole host."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def describe_machine(device: torch.device | str) -> dict:
    """CPU model and core counts, thread settings, and the GPU when the run uses one."""
    device = torch.device(device)
    machine = {
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_available": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "device": device.type,
        "gpu_name": None,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        machine.update(gpu_name=torch.cuda.get_device_name(index),
                       gpu_memory_gib=round(properties.total_memory / 2 ** 30, 1),
                       gpu_compute_capability=f"{properties.major}.{properties.minor}",
                       gpu_count=torch.cuda.device_count())
    return machine


def nvcc_version() -> str | None:
    """'13.0' from ``nvcc --version`` ('release 13.0, V13.0.88'), or None without nvcc."""
    try:
        text = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release\s+([\d.]+)", text)
    return match.group(1) if match else None


def cxx_version() -> str | None:
    """First line of ``$CXX --version`` (g++ compiles the CUDA sources for the emulated backend)."""
    compiler = os.environ.get("CXX", "g++")
    try:
        text = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return text.splitlines()[0].strip() if text else None


def software_versions() -> dict:
    """Python, PyTorch (and the CUDA it was built with), NumPy, CuPy when importable, nvcc and g++ when present."""
    import numpy

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "cupy": None,
        "nvcc": nvcc_version(),
        "cxx": cxx_version(),
    }
    try:
        import cupy

        versions["cupy"] = cupy.__version__
        try:
            versions["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()  # e.g. 12040 for 12.4
            versions["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        except Exception:  # CuPy without a driver: the version of the package is still worth recording
            pass
    except ImportError:
        pass
    return versions


def git_revision() -> dict:
    """The commit of the code that was measured, and whether the tree had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def command_line(argv: list[str] | None = None) -> dict:
    """The exact command, as typed (argv[0] as given, so no absolute path of this machine is added)."""
    argv = list(sys.argv if argv is None else argv)
    return {"command": "python " + shlex.join(argv), "argv": argv}


def slug(text: str, max_length: int = 48) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': lower case, runs of other characters become '-'."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    text = re.sub(r"\bcpu @ [\d.]+ ?ghz\b", "", text)  # 'Intel(R) Xeon(R) ... CPU @ 2.20GHz': the clock adds nothing
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:max_length].rstrip("-") or "unknown"


def device_slug(machine: dict) -> str:
    """The GPU's name on a GPU run, 'cpu-<model>' on a CPU run: the <device-slug> of result file names."""
    if machine.get("gpu_name"):
        return slug(machine["gpu_name"])
    return "cpu-" + slug(machine["cpu_model"])


def timestamp() -> str:
    """Local date and time for file names: 2026-11-23-0915 (minutes, so two runs of a day do not collide)."""
    return datetime.datetime.now().strftime("%Y-%m-%d-%H%M")


def iso_now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
