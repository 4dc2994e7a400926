"""kernels/backend: choosing a backend, the emulation launcher, atomics under the emulation, and that every
kernels/*.cu is valid CUDA (nvcc -ptx) as well as valid C++ for the emulation."""
import ctypes
import glob
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import backend
from kernels.backend import BackendError, emulation_launchers, launch, resolve_backend

KERNEL_DIR = Path(backend.__file__).resolve().parent
CUDA_SOURCES = sorted(KERNEL_DIR.glob("*.cu"))


def gpu_ready() -> bool:
    return backend.cupy_status() is None


def test_resolve_backend_cuda_without_gpu_says_to_use_torch_in_one_line():
    if gpu_ready():
        pytest.skip("a GPU and CuPy are present: --backend cuda is valid here")
    with pytest.raises(BackendError) as error:
        resolve_backend("cuda", "cpu")
    message = str(error.value)
    assert "\n" not in message and "--backend torch" in message


def test_resolve_backend_rejects_unknown_names():
    with pytest.raises(BackendError, match="unknown --backend 'tensorrt'") as error:
        resolve_backend("tensorrt", "cpu")
    assert "torch" in str(error.value) and "emulated" in str(error.value)


def test_resolve_backend_emulated_on_a_cuda_device_asks_for_the_cpu():
    # torch.device("cuda") is only a name: the check needs no GPU.
    with pytest.raises(BackendError, match="--device cpu"):
        resolve_backend("emulated", torch.device("cuda"))


@pytest.mark.skipif(not gpu_ready(), reason="needs a GPU and CuPy to reach the device check")
def test_resolve_backend_cuda_on_a_cpu_device_asks_for_the_gpu():
    with pytest.raises(BackendError, match="--device cuda"):
        resolve_backend("cuda", "cpu")


def test_resolve_backend_auto_and_explicit_choices():
    assert resolve_backend(None, "cpu") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("emulated", "cpu") == "emulated"


def test_auto_picks_the_emulated_kernels_on_a_cpu_for_the_scripts_that_ask_and_torch_without_a_compiler(monkeypatch):
    """04 and 05 ask for cpu_choice="emulated": auto gives it where g++ runs, torch where no compiler does (never
    an error), and only auto says so at start-up."""
    from kernels.backend import auto_backend_note

    assert resolve_backend("auto", "cpu", cpu_choice="emulated") == "emulated"
    assert resolve_backend(None, "cpu", cpu_choice="emulated") == "emulated"
    assert resolve_backend("torch", "cpu", cpu_choice="emulated") == "torch"
    assert "backend auto -> emulated" in auto_backend_note("auto", "emulated")
    assert auto_backend_note("emulated", "emulated") is None and auto_backend_note("auto", "torch") is None
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert resolve_backend("auto", "cpu", cpu_choice="emulated") == "torch"
    with pytest.raises(BackendError, match="needs a C\\+\\+ compiler"):
        resolve_backend("emulated", "cpu")


def test_emulation_launchers_parse_kernel_signatures():
    source = """
    __device__ inline float square(float x) { return x * x; }
    extern "C" __global__ void scale(const float* __restrict__ values, float factor, int n, float* out) {}
    extern "C" __global__ void count(unsigned int* __restrict__ counter,
                                     long long n) {}
    """
    launchers = emulation_launchers(source)
    assert launchers.count('extern "C" void emulate_') == 2  # device helpers get no launcher
    assert ('emulate_scale(unsigned int grid_x, unsigned int block_x, const float* __restrict__ values, '
            'float factor, int n, float* out)') in launchers
    assert "scale(values, factor, n, out);" in launchers
    assert "count(counter, n);" in launchers


ATOMIC_PROBE = """
// Every thread hits the same few addresses: the emulation must not lose updates between CPU threads.
extern "C" __global__ void hammer(float* total, float* buckets, unsigned int* bits, unsigned int* largest, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(total, 1.0f);
    atomicAdd(&buckets[i % 4], 0.5f);
    atomicOr(bits, 1u << (i % 32));
    atomicMax(largest, (unsigned int)i);
}
"""


def test_emulated_atomics_accumulate_every_update(tmp_path, monkeypatch):
    # A throw-away kernel folder: launch() reads kernels/<module>.cu from backend.KERNEL_DIR.
    shutil.copy(KERNEL_DIR / "cuda_emulation.h", tmp_path / "cuda_emulation.h")
    (tmp_path / "atomic_probe.cu").write_text(ATOMIC_PROBE)
    monkeypatch.setattr(backend, "KERNEL_DIR", tmp_path)
    monkeypatch.setenv("NERF_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backend, "_emulated_libraries", {})
    n = 200_000  # integers below 2^24 are exact in float32, so any lost update shows
    total, buckets = torch.zeros(1), torch.zeros(4)
    bits, largest = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    launch("atomic_probe", "hammer", n, (total, buckets, bits, largest, np.int32(n)), "emulated")
    assert total.item() == n
    assert buckets.tolist() == [n / 8] * 4
    assert bits.item() == -1  # all 32 bits set, read back as a signed int32
    assert largest.item() == n - 1


def test_launch_rejects_untyped_scalars_and_gpu_tensors():
    ones = torch.ones(4)
    with pytest.raises(TypeError, match="typed numpy scalar"):
        launch("sampling", "sample_pdf", 1, (ones, ones, ones, 1, 1, 1, np.float32(0), ones), "emulated")
    with pytest.raises(ValueError, match="backend must be cuda or emulated"):
        launch("sampling", "sample_pdf", 1, (), "torch")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_every_cuda_source_compiles_with_nvcc():
    assert CUDA_SOURCES, "no kernels/*.cu found"

    def compile_ptx(source: Path):
        result = subprocess.run(["nvcc", "-ptx", "-arch=sm_75", f"-I{KERNEL_DIR}", str(source), "-o", "/dev/null"],
                                capture_output=True, text=True)
        return source.name, result.returncode, result.stderr

    with ThreadPoolExecutor(max_workers=len(CUDA_SOURCES)) as pool:  # nvcc is single-threaded: overlap them
        failures = [f"{name}:\n{stderr}" for name, code, stderr in pool.map(compile_ptx, CUDA_SOURCES) if code]
    assert not failures, "\n".join(failures)


def find_nvrtc():
    """Path of libnvrtc from the pip wheels (nvidia-cuda-nvrtc for CUDA 13, nvidia-cuda-nvrtc-cu12), or None."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:  # nvidia/cu13/lib/libnvrtc.so.13, nvidia/cuda_nvrtc/lib/libnvrtc.so.12
        found = sorted(glob.glob(f"{root}/*/lib/libnvrtc.so.*"))
        if found:
            return found[-1]
    return None


def nvrtc_compile(library, source: Path, options) -> tuple[int, str]:
    """Compile one .cu to PTX with NVRTC (the compiler CuPy uses; no GPU needed). Returns (status, log)."""
    program = ctypes.c_void_p()
    status = library.nvrtcCreateProgram(ctypes.byref(program), source.read_bytes(), source.name.encode(), 0, None, None)
    assert status == 0, f"nvrtcCreateProgram failed with status {status}"
    encoded = [option.encode() for option in options]
    status = library.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
    log_size = ctypes.c_size_t()
    library.nvrtcGetProgramLogSize(program, ctypes.byref(log_size))
    log = ctypes.create_string_buffer(log_size.value)
    library.nvrtcGetProgramLog(program, log)
    library.nvrtcDestroyProgram(ctypes.byref(program))
    return status, log.value.decode(errors="replace")


@pytest.mark.skipif(find_nvrtc() is None, reason="NVRTC not installed (pip install nvidia-cuda-nvrtc, in requirements.txt "
                                                  "on Linux; no wheel for other systems)")
def test_every_cuda_source_compiles_with_nvrtc_as_cupy_does():
    """CuPy compiles with NVRTC, which (unlike nvcc) includes no C headers: e.g. INFINITY exists only if the source
    defines it. Same options as kernels/backend.py gives CuPy, for the oldest GPU the project supports."""
    library = ctypes.CDLL(find_nvrtc())
    options = [*backend.cupy_compile_options(), "-arch=compute_75"]
    failures = []
    for source in CUDA_SOURCES:
        status, log = nvrtc_compile(library, source, options)
        if status != 0:
            failures.append(f"{source.name} (NVRTC status {status}):\n{log}")
    assert CUDA_SOURCES and not failures, "\n".join(failures)


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: path.name)
def test_every_cuda_source_builds_for_the_emulation(source):
    backend._emulated_library(source.stem)  # raises with g++'s message if the shim cannot compile it
