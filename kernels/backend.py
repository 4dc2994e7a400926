"""Backends for the hot kernels: the PyTorch twin, the CUDA source through CuPy, or that same source on the CPU.

Every kernel module in this folder has three faces (README, "Backends"):
  * ``torch``    : a readable PyTorch twin, the reference;
  * ``cuda``     : ``kernels/<module>.cu`` compiled at first use by ``cupy.RawModule`` and launched on
                   PyTorch's current CUDA stream, directly on the tensors' memory (no copies);
  * ``emulated`` : the very same ``.cu`` file compiled by g++ as C++ with the shim ``cuda_emulation.h``
                   and launched through ctypes on CPU tensors, so that a machine with no GPU executes,
                   tests and can step through every line of the CUDA code.

A kernel module calls :func:`launch` with the name of its ``.cu`` file, the name of an
``extern "C" __global__`` function, the number of threads (one per item) and the arguments. Arguments are
torch tensors or numpy scalars typed to match the C signature exactly (``np.int32``, ``np.uint32``,
``np.int64``, ``np.float32``): the C side has no other way to know their width.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError

KERNEL_DIR = Path(__file__).resolve().parent
BACKENDS = ("torch", "cuda", "emulated")
DEFAULT_BLOCK = 128  # threads per block; a multiple of the warp size, small enough to keep occupancy high


class BackendError(UserError):
    """A backend that cannot run here (no GPU, no CuPy, no compiler): one line saying what to do instead."""


# ----------------------------------------------------------------------------------------------------------
# Choosing a backend
# ----------------------------------------------------------------------------------------------------------
def cupy_status() -> str | None:
    """Return None when CuPy can launch kernels on a GPU, else a short reason why not."""
    try:
        import cupy
    except ImportError:
        return ("CuPy is not installed (pip install cupy-cuda12x for CUDA 12 drivers, "
                "cupy-cuda13x for CUDA 13; see README, 'Backends')")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy found no NVIDIA GPU"
    except Exception as error:  # cupy.cuda.runtime.CUDARuntimeError when no driver or device is present
        return f"CuPy cannot reach a GPU ({type(error).__name__}: {str(error).splitlines()[0]})"
    if not torch.cuda.is_available():
        return "PyTorch was built without CUDA or sees no GPU"
    return None


def default_backend(device: torch.device | str, cpu_choice: str = "torch") -> str:
    """``cuda`` when the run is on a GPU and CuPy works there. On a CPU, ``cpu_choice``: ``torch``, or
    ``emulated`` for a script whose kernels are most of its time (04 and 05: on 2 CPU cores their --quick runs
    train 1.8x and 2.3x faster with the CUDA source compiled by g++ than with the twins, to the same PSNR;
    benchmarks/results/compare-cpu-backend-*-quick.*), which falls back to ``torch`` where no C++ compiler runs
    and in a course release."""
    if torch.device(device).type == "cuda" and cupy_status() is None:
        return "cuda"
    if torch.device(device).type == "cpu" and cpu_choice == "emulated" and not in_course_release():
        try:
            emulation_compiler()
            return "emulated"
        except BackendError:
            return "torch"
    return "torch"


COURSE_RELEASE_MARK = Path("course") / "RELEASE.json"  # written by course/release.py into every release


def in_course_release() -> bool:
    """Whether this code is a course release (`python -m course.release` writes COURSE_RELEASE_MARK): there auto
    keeps the twins on a CPU, so that a lesson runs the student's own PyTorch twin (occupancy_update is a part)."""
    return (Path(__file__).resolve().parents[1] / COURSE_RELEASE_MARK).exists()


def resolve_backend(name: str | None, device: torch.device | str, cpu_choice: str = "torch") -> str:
    """Turn the ``--backend`` flag into one of BACKENDS, or raise a one-line BackendError. ``auto`` (or None) is
    `default_backend(device, cpu_choice)`."""
    device = torch.device(device)
    if name in (None, "auto"):
        return default_backend(device, cpu_choice)
    if name not in BACKENDS:
        raise BackendError(f"unknown --backend {name!r}: choose one of {', '.join(BACKENDS)} (or auto)")
    if name == "cuda":
        reason = cupy_status()
        if reason is not None:
            raise BackendError(f"--backend cuda cannot run here: {reason}; use --backend torch "
                               f"(PyTorch twin) or --backend emulated (the CUDA source on the CPU)")
        if device.type != "cuda":
            raise BackendError("--backend cuda needs the model on the GPU: add --device cuda")
    if name == "emulated":
        if device.type != "cpu":
            raise BackendError("--backend emulated runs the CUDA source on the CPU: add --device cpu")
        emulation_compiler()  # fail now, with the fix, rather than at the first kernel call
    return name


def auto_backend_note(name: str | None, backend: str) -> str | None:
    """The start-up line of a run whose `--backend auto` chose the emulated kernels on a CPU (None otherwise)."""
    if name in (None, "auto") and backend == "emulated":
        return ("backend auto -> emulated: the CUDA kernels compiled for the CPU with g++ (about twice as fast here "
                "as the PyTorch twins; the first compile takes a while and is cached); --backend torch for the twins")
    return None


# ----------------------------------------------------------------------------------------------------------
# Argument checks shared by every kernel wrapper
# ----------------------------------------------------------------------------------------------------------
def check_tensor(name: str, tensor: torch.Tensor, dtype: torch.dtype, device_type: str | None = None) -> None:
    """Raise a ValueError naming the argument when it has the wrong dtype/device or is not contiguous."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {tensor.dtype} (convert with .to({dtype}))")
    if device_type is not None and tensor.device.type != device_type:
        raise ValueError(f"{name} must be on {device_type}, got {tensor.device}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def backend_device_type(backend: str) -> str:
    """Where a backend's tensors must live: ``cuda`` for CuPy, ``cpu`` for the emulation."""
    return "cuda" if backend == "cuda" else "cpu"


# ----------------------------------------------------------------------------------------------------------
# Launching
# ----------------------------------------------------------------------------------------------------------
INT32_MAX = 2 ** 31 - 1  # the kernels compute thread and element indices in 32-bit ints
SYNC_ENV = "NERF_KERNEL_SYNC"  # set to 1: wait for each CUDA launch to finish and report its error there


def launch(module: str, kernel: str, n_threads: int, args: tuple, backend: str, block: int = DEFAULT_BLOCK) -> None:
    """Run ``kernel`` of ``kernels/<module>.cu`` with ``n_threads`` threads (a 1-D grid of ``block``-sized blocks).

    Kernels guard themselves with ``if (i >= n) return;``, so the last block may be partly idle. Sizes that 32-bit
    indices cannot hold are refused here, with the argument's name, before anything runs.
    """
    if backend not in ("cuda", "emulated"):
        raise ValueError(f"launch() runs compiled kernels: backend must be cuda or emulated, got {backend!r}")
    check_int32_sizes(module, kernel, n_threads, args)
    if n_threads <= 0:
        return
    grid = (n_threads + block - 1) // block
    if backend == "cuda":
        _launch_cupy(module, kernel, grid, block, args)
    else:
        _launch_emulated(module, kernel, grid, block, args)


def kernel_parameters(module: str, kernel: str) -> list[tuple[str, str]]:
    """The (C type, name) of each parameter of ``kernel`` in kernels/<module>.cu, e.g. ('const float*', 'sigmas')."""
    for name, parameters in _KERNEL_SIGNATURE.findall(strip_comments(kernel_source(module))):
        if name == kernel:
            result = []
            for parameter in filter(None, (p.strip() for p in parameters.split(","))):
                parameter_name = re.findall(r"\w+", parameter)[-1]
                c_type = parameter[:parameter.rindex(parameter_name)].replace("__restrict__", "")
                result.append((" ".join(c_type.split()).replace(" *", "*"), parameter_name))
            return result
    raise ValueError(f"kernels/{module}.cu has no extern \"C\" __global__ function {kernel!r}")


def check_int32_sizes(module: str, kernel: str, n_threads: int, args: tuple) -> None:
    """Refuse launches whose thread count or arrays outgrow the kernels' 32-bit indices (a silent wrap on the GPU)."""
    where = f"kernels/{module}.cu {kernel}"
    fix = "split the batch into smaller chunks (e.g. a smaller --chunk or batch) or use --backend torch"
    if n_threads > INT32_MAX:
        raise BackendError(f"{where}: {n_threads} threads, more than 32-bit indices hold (2^31 - 1): {fix}")
    if any(isinstance(arg, torch.Tensor) and arg.numel() > INT32_MAX for arg in args):
        names = [name for _, name in kernel_parameters(module, kernel)]
        for name, arg in zip(names, args):
            if isinstance(arg, torch.Tensor) and arg.numel() > INT32_MAX:
                raise BackendError(f"{where}: {name} has {arg.numel()} elements, more than 32-bit indices hold "
                                   f"(2^31 - 1): {fix}")


def kernel_source(module: str) -> str:
    path = KERNEL_DIR / f"{module}.cu"
    return path.read_text()


# --- cuda: CuPy RawModule ---------------------------------------------------------------------------------
_cupy_modules: dict[str, object] = {}


def cupy_compile_options() -> tuple[str, ...]:
    """The NVRTC options of our CuPy modules (CuPy adds the target architecture of the current GPU)."""
    return ("-std=c++17", f"-I{KERNEL_DIR}")


def _cupy_module(module: str):
    if module not in _cupy_modules:
        import cupy

        # RawModule compiles with NVRTC at first use and caches the binary on disk (~/.cupy/kernel_cache).
        _cupy_modules[module] = cupy.RawModule(code=kernel_source(module), options=cupy_compile_options())
    return _cupy_modules[module]


def check_cuda_devices(module: str, kernel: str, devices: list[torch.device], current: int) -> None:
    """All tensors on one GPU, the current one: a kernel launched on one device cannot read another's memory
    (an illegal address at some later synchronisation, far from its cause)."""
    where = f"kernels/{module}.cu {kernel}"
    if any(device.type != "cuda" for device in devices):
        raise BackendError(f"{where}: backend cuda needs every tensor on the GPU, got "
                           f"{', '.join(sorted({str(device) for device in devices}))}")
    indices = sorted({device.index if device.index is not None else current for device in devices})
    if len(indices) > 1:
        raise BackendError(f"{where}: tensors on different GPUs ({', '.join(f'cuda:{i}' for i in indices)}): "
                           f"move them to one device first")
    if indices and indices[0] != current:
        raise BackendError(f"{where}: tensors on cuda:{indices[0]} but the current device is cuda:{current}: "
                           f"run under `with torch.cuda.device({indices[0]}):`")


def _launch_cupy(module: str, kernel: str, grid: int, block: int, args: tuple) -> None:
    import cupy

    tensors = [arg for arg in args if isinstance(arg, torch.Tensor)]
    check_cuda_devices(module, kernel, [tensor.device for tensor in tensors], torch.cuda.current_device())
    function = _cupy_module(module).get_function(kernel)
    cupy_args = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            # Zero-copy view of the tensor's memory through __cuda_array_interface__ (a null pointer when empty).
            cupy_args.append(cupy.asarray(arg.detach()) if arg.numel() > 0 else np.uint64(0))
        else:
            cupy_args.append(arg)
    # PyTorch's current stream, so that the kernel runs after the torch ops that produced its inputs.
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    with stream:
        function((grid,), (block,), tuple(cupy_args))
    if os.environ.get(SYNC_ENV, "0") not in ("", "0"):
        # Launches are asynchronous: a fault (an illegal address) is otherwise reported by whichever later call
        # synchronises. NERF_KERNEL_SYNC=1 waits here, so the error names this kernel (slow: debugging only).
        try:
            stream.synchronize()
        except Exception as error:
            raise RuntimeError(f"kernels/{module}.cu {kernel} failed on the GPU (grid {grid} x block {block}): "
                               f"{type(error).__name__}: {error}") from error


# --- emulated: the .cu compiled as C++ ----------------------------------------------------------------------
_KERNEL_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_CTYPE_OF = {np.int32: ctypes.c_int32, np.uint32: ctypes.c_uint32, np.int64: ctypes.c_int64,
             np.float32: ctypes.c_float, np.float64: ctypes.c_double}
_emulated_libraries: dict[str, ctypes.CDLL] = {}
_compile_lock = threading.Lock()


def emulation_compiler() -> str:
    """The C++ compiler for the emulated backend (``$CXX`` or g++), or a BackendError saying how to get one."""
    compiler = os.environ.get("CXX", "g++")
    try:
        subprocess.run([compiler, "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise BackendError(f"--backend emulated needs a C++ compiler with OpenMP ({compiler} not found): "
                           f"install g++ (apt-get install g++) or set CXX") from None
    return compiler


def _parameter_names(parameters: str) -> list[str]:
    """'const float* __restrict__ sigmas, int n' -> ['sigmas', 'n']."""
    names = []
    for parameter in parameters.split(","):
        parameter = parameter.strip()
        if parameter:
            names.append(re.findall(r"\w+", parameter)[-1])
    return names


def strip_comments(source: str) -> str:
    """Remove // and /* */ comments, so that a comment inside a kernel's parameter list cannot break parsing."""
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", "", source)


def emulation_launchers(source: str) -> str:
    """C++ source of one launcher per kernel: the grid loop that stands in for the GPU's scheduler."""
    launchers = []
    for kernel, parameters in _KERNEL_SIGNATURE.findall(strip_comments(source)):
        call_arguments = ", ".join(_parameter_names(parameters))
        launchers.append(f"""
extern "C" void emulate_{kernel}(unsigned int grid_x, unsigned int block_x, {parameters}) {{
    #pragma omp parallel for schedule(dynamic, 4)
    for (long long block = 0; block < (long long)grid_x; ++block) {{
        gridDim.x = grid_x; blockDim.x = block_x; blockIdx.x = (unsigned int)block;
        for (unsigned int thread = 0; thread < block_x; ++thread) {{
            threadIdx.x = thread;
            {kernel}({call_arguments});
        }}
    }}
}}""")
    return "\n".join(launchers)


def emulation_cache_dir() -> Path:
    """Compiled libraries live outside the repo by default (``$NERF_KERNEL_CACHE`` overrides)."""
    root = os.environ.get("NERF_KERNEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / "nerf-family-kernels"


def emulation_flags() -> list[str]:
    """g++ flags of the emulation: ours, then the extra ones in ``$NERF_EMULATION_CXXFLAGS`` (e.g. ``-mfma``).

    ``-ffp-contract=off``: never fuse ``a * b + c`` into one fused multiply-add. The twins round the product before
    the sum (PyTorch evaluates one operation at a time), and so do the kernels on the GPU (``mul_rn`` uses
    ``__fmul_rn``, which nvcc never fuses); without this flag g++ fuses wherever FMA instructions exist (aarch64,
    ``-mfma``, ``-march=native`` on a recent x86-64) and the bit-exact comparisons with the twins fail.
    """
    extra = shlex.split(os.environ.get("NERF_EMULATION_CXXFLAGS", ""))
    return ["-x", "c++", "-std=c++17", "-O2", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared",
            f"-I{KERNEL_DIR}", *extra]


def _compile_emulated(module: str) -> Path:
    source = kernel_source(module)
    shim = (KERNEL_DIR / "cuda_emulation.h").read_text()
    headers = "".join(path.read_text() for path in sorted(KERNEL_DIR.glob("*.cuh")))
    unit = (f'#include "cuda_emulation.h"\n#include "{module}.cu"\n' + emulation_launchers(source))
    flags = emulation_flags()
    digest = hashlib.sha256("\0".join([source, shim, headers, unit, *flags]).encode()).hexdigest()[:16]
    cache = emulation_cache_dir()
    library = cache / f"{module}-{digest}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    compiler = emulation_compiler()
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        unit_path = Path(scratch) / f"{module}_emulated.cpp"
        unit_path.write_text(unit)
        output = Path(scratch) / library.name
        result = subprocess.run([compiler, *flags, str(unit_path), "-o", str(output)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"g++ could not compile kernels/{module}.cu for the emulated backend:\n{result.stderr}")
        os.replace(output, library)  # atomic: a parallel test process never loads a half-written library
    return library


def _emulated_library(module: str) -> ctypes.CDLL:
    with _compile_lock:
        if module not in _emulated_libraries:
            _emulated_libraries[module] = ctypes.CDLL(str(_compile_emulated(module)))
    return _emulated_libraries[module]


def _launch_emulated(module: str, kernel: str, grid: int, block: int, args: tuple) -> None:
    launcher = getattr(_emulated_library(module), f"emulate_{kernel}")
    c_args = [ctypes.c_uint32(grid), ctypes.c_uint32(block)]
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if arg.device.type != "cpu":
                raise ValueError(f"the emulated backend runs on the CPU, got a tensor on {arg.device}")
            c_args.append(ctypes.c_void_p(arg.data_ptr()))
        elif type(arg) in _CTYPE_OF:
            c_args.append(_CTYPE_OF[type(arg)](arg.item()))
        else:
            raise TypeError(f"kernel argument {arg!r} must be a tensor or a typed numpy scalar "
                            f"(np.int32, np.uint32, np.int64, np.float32) matching the C signature")
    launcher.restype = None
    launcher(*c_args)

