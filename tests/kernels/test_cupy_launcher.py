"""kernels/backend._launch_cupy without a GPU: a stand-in ``cupy`` module records what the launcher asks CuPy for
(the source and options to compile, grid and block, the stream, every argument) and runs the emulated kernel
underneath, so the results of every kernel launched through the ``cuda`` path are still checked.

What must hold for each launch, as on a real GPU:
  * grid x block covers every item, with no wholly idle block; block within the device limit (1024) and a
    multiple of the warp size;
  * it runs on PyTorch's current stream (an ExternalStream of torch.cuda.current_stream().cuda_stream);
  * one argument per parameter of the ``.cu`` signature: pointers as arrays of the parameter's C type that share
    the tensor's memory (no copy: outputs are written in place), scalars as the numpy type of the same width.
The stand-in knows nothing of CUDA devices, so the device check is tested on its own (test_check_cuda_devices_*).
"""
import sys
import types

import numpy as np
import pytest
import torch

from kernels import backend
from kernels.compositing import composite, starts_from_counts
from kernels.hash_encoding import HashEncoding
from kernels.ray_marching import march_rays, occupancy_update, pack_bitfield, pack_bitfield_torch
from kernels.sampling import sample_pdf

TORCH_STREAM = 0x5EED  # the handle the stand-in torch.cuda.current_stream() returns
MAX_THREADS_PER_BLOCK = 1024  # every CUDA GPU since compute capability 2.0
POINTEE_DTYPE = {"float": np.float32, "int": np.int32, "unsigned int": np.uint32, "long long": np.int64,
                 "unsigned char": np.uint8}
SCALAR_TYPE = {"float": np.float32, "int": np.int32, "unsigned int": np.uint32, "long long": np.int64}
KERNEL_MODULES = ("compositing", "sampling", "hash_encoding", "ray_marching")


class FakeArray:
    """What cupy.asarray returns for a tensor: the same memory, seen through __cuda_array_interface__."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.ptr = tensor.data_ptr()
        self.dtype = np.dtype(str(tensor.dtype).replace("torch.", ""))


class FakeCupy(types.ModuleType):
    def __init__(self, fail_on_sync=False):
        super().__init__("cupy")
        self.compiled, self.launches, self.syncs, self.active_streams = [], [], [], []
        self.fail_on_sync = fail_on_sync
        fake = self

        class RawModule:
            def __init__(self, code, options=()):
                fake.compiled.append(dict(code=code, options=tuple(options)))
                self.module = next(m for m in KERNEL_MODULES if backend.kernel_source(m) == code)

            def get_function(self, name):
                return lambda grid, block, args, **kwargs: fake.run(self.module, name, grid, block, args, kwargs)

        class ExternalStream:
            def __init__(self, ptr):
                self.ptr = ptr

            def __enter__(self):
                fake.active_streams.append(self.ptr)
                return self

            def __exit__(self, *exc):
                fake.active_streams.pop()

            def synchronize(self):
                fake.syncs.append((self.ptr, len(fake.launches)))
                if fake.fail_on_sync:
                    raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

        self.RawModule = RawModule
        self.asarray = FakeArray
        self.cuda = types.SimpleNamespace(ExternalStream=ExternalStream)

    def run(self, module, kernel, grid, block, args, kwargs):
        self.launches.append(dict(module=module, kernel=kernel, grid=grid, block=block, args=args, kwargs=kwargs,
                                  stream=self.active_streams[-1] if self.active_streams else None))
        emulated_args = tuple(arg.tensor if isinstance(arg, FakeArray)
                              else torch.empty(0) if isinstance(arg, np.uint64) else arg for arg in args)
        backend._launch_emulated(module, kernel, grid[0], block[0], emulated_args)


@pytest.fixture
def fake_cupy(monkeypatch):
    """Install the stand-in: the 'cuda' backend then runs CPU tensors through _launch_cupy and the emulation."""
    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy_modules", {})
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=TORCH_STREAM))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(backend, "backend_device_type", lambda name: "cpu")  # the wrappers accept CPU tensors
    checked_devices = []
    monkeypatch.setattr(backend, "check_cuda_devices", lambda module, kernel, devices, current:
                        checked_devices.append((kernel, devices)))
    requested = []
    real_launch = backend.launch

    def spy_launch(module, kernel, n_threads, args, backend_name, block=backend.DEFAULT_BLOCK):
        if backend_name == "cuda":
            requested.append(dict(module=module, kernel=kernel, n_threads=n_threads, args=args))
        real_launch(module, kernel, n_threads, args, backend_name, block)

    monkeypatch.setattr(backend, "launch", spy_launch)
    fake.requested, fake.checked_devices = requested, checked_devices
    return fake


def assert_launches_are_well_formed(fake):
    launched = [r for r in fake.requested if r["n_threads"] > 0]
    assert len(fake.launches) == len(launched) > 0
    for request, call in zip(launched, fake.launches):
        where = f"{request['module']}.{request['kernel']}"
        assert call["kernel"] == request["kernel"], where
        (grid,), (block,) = call["grid"], call["block"]  # 1-D tuples, as RawKernel.__call__ takes them
        n = request["n_threads"]
        assert grid * block >= n and (grid - 1) * block < n, f"{where}: grid {grid} x block {block} for {n} items"
        assert 0 < block <= MAX_THREADS_PER_BLOCK and block % 32 == 0, f"{where}: block {block}"
        assert call["stream"] == TORCH_STREAM, f"{where}: launched on stream {call['stream']}, not torch's"
        parameters = backend.kernel_parameters(request["module"], request["kernel"])
        assert len(call["args"]) == len(parameters), where
        for (c_type, name), original, passed in zip(parameters, request["args"], call["args"]):
            if c_type.endswith("*"):
                pointee = c_type.removeprefix("const ").removesuffix("*").strip()
                assert isinstance(original, torch.Tensor), f"{where}: {name} needs a tensor"
                if original.numel() == 0:
                    assert isinstance(passed, np.uint64) and passed == 0, f"{where}: {name} empty -> null pointer"
                    continue
                assert isinstance(passed, FakeArray), f"{where}: {name} must be passed as an array"
                assert passed.dtype == POINTEE_DTYPE[pointee], f"{where}: {name} is {passed.dtype}, .cu has {c_type}"
                assert passed.ptr == original.data_ptr(), f"{where}: {name} is a copy, not the tensor's memory"
            else:
                assert type(passed) is SCALAR_TYPE[c_type], f"{where}: {name} is {type(passed).__name__}, .cu has {c_type}"
    for compiled in fake.compiled:
        assert compiled["options"] == backend.cupy_compile_options()


def test_cuda_path_of_compositing_launches_well_formed_kernels_and_matches_the_emulation(fake_cupy):
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 40, (3000,), generator=generator, dtype=torch.int32)  # (R,) some rays empty
    n = int(counts.sum())
    t_starts = torch.rand(n, generator=generator)
    inputs = (torch.rand(n, generator=generator) * 5, torch.rand(n, 3, generator=generator), t_starts,
              t_starts + 0.05, starts_from_counts(counts), counts)
    results = {}
    for name in ("emulated", "cuda"):
        sigmas, rgbs = inputs[0].clone().requires_grad_(True), inputs[1].clone().requires_grad_(True)
        weights, opacity, color, depth = composite(sigmas, rgbs, *inputs[2:], early_stop_eps=1e-4, backend=name)
        (color.sum() + depth.sum() + weights.square().sum()).backward()
        results[name] = (weights, opacity, color, depth, sigmas.grad, rgbs.grad)
    for emulated, cuda in zip(results["emulated"], results["cuda"]):
        assert torch.equal(emulated, cuda)
    assert_launches_are_well_formed(fake_cupy)
    assert [call["kernel"] for call in fake_cupy.launches] == ["composite_forward", "composite_backward"]


def test_cuda_path_of_the_hash_encoding_launches_well_formed_kernels_and_matches_the_emulation(fake_cupy):
    torch.manual_seed(0)
    encoding = HashEncoding(n_levels=6, n_features=2, log2_table_size=12, base_resolution=4, max_resolution=128)
    x = torch.rand(40_000, 3, generator=torch.Generator().manual_seed(1))  # 240k threads: more than 1024 x 128
    results = {}
    for name in ("emulated", "cuda"):
        x_leaf = x.clone().requires_grad_(True)
        encoded = encoding(x_leaf, backend=name)
        grad_x, grad_table = torch.autograd.grad(encoded.square().sum(), [x_leaf, encoding.table])
        results[name] = (encoded, grad_x, grad_table)
    assert torch.equal(results["emulated"][0], results["cuda"][0])
    assert torch.equal(results["emulated"][1], results["cuda"][1])  # written, not accumulated: deterministic
    torch.testing.assert_close(results["cuda"][2], results["emulated"][2], rtol=1e-5, atol=1e-5)  # atomicAdd order
    assert_launches_are_well_formed(fake_cupy)
    assert max(request["n_threads"] for request in fake_cupy.requested) > MAX_THREADS_PER_BLOCK * 128


def test_cuda_path_of_sampling_and_marching_launches_well_formed_kernels_and_matches_the_emulation(fake_cupy):
    generator = torch.Generator().manual_seed(2)
    bins = torch.sort(torch.rand(500, 33, generator=generator), dim=1).values
    weights = torch.rand(500, 32, generator=generator)
    samples = {name: sample_pdf(bins, weights, 64, stratified=True, generator=torch.Generator().manual_seed(3),
                                backend=name) for name in ("emulated", "cuda")}
    assert torch.equal(samples["emulated"], samples["cuda"])

    density = torch.rand(16 ** 3, generator=generator)
    cells = torch.randperm(16 ** 3, generator=generator)[:1000].sort().values
    new = torch.rand(1000, generator=generator)
    updated = {name: occupancy_update(density, cells, new, 0.95, backend=name) for name in ("emulated", "cuda")}
    assert torch.equal(updated["emulated"], updated["cuda"])
    bitfield = {name: pack_bitfield(density, 0.5, backend=name) for name in ("emulated", "cuda")}
    assert torch.equal(bitfield["emulated"], bitfield["cuda"])

    rays_d = torch.nn.functional.normalize(torch.randn(700, 3, generator=generator), dim=-1)
    rays_o = -2.0 * rays_d + 0.3 * torch.randn(700, 3, generator=generator)
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    occupied = pack_bitfield_torch((torch.rand(16 ** 3, generator=generator) < 0.3).float(), 0.5)
    offsets = torch.rand(700, generator=generator)
    marched = {name: march_rays(rays_o, rays_d, aabb, occupied, 16, near=0.1, far=5.0, dt=0.01, offsets=offsets,
                                backend=name)
               for name in ("emulated", "cuda")}
    for emulated, cuda in zip(marched["emulated"], marched["cuda"]):
        assert torch.equal(emulated, cuda)
    assert_launches_are_well_formed(fake_cupy)
    launched = {call["kernel"] for call in fake_cupy.launches}
    assert launched == {"sample_pdf", "occupancy_update", "pack_bitfield", "march_rays_count", "march_rays_write"}
    # the device check saw every launch's tensors
    assert [kernel for kernel, _ in fake_cupy.checked_devices] == [call["kernel"] for call in fake_cupy.launches]


def test_sync_flag_reports_a_kernel_fault_at_its_launch(fake_cupy, monkeypatch):
    bins = torch.sort(torch.rand(10, 9, generator=torch.Generator().manual_seed(0)), dim=1).values
    weights = torch.rand(10, 8)
    sample_pdf(bins, weights, 4, backend="cuda")
    assert fake_cupy.syncs == []  # asynchronous by default: no waiting after a launch
    monkeypatch.setenv(backend.SYNC_ENV, "1")
    sample_pdf(bins, weights, 4, backend="cuda")
    assert fake_cupy.syncs == [(TORCH_STREAM, 2)]  # torch's stream, after the second launch
    fake_cupy.fail_on_sync = True
    with pytest.raises(RuntimeError, match=r"kernels/sampling.cu sample_pdf failed on the GPU .*illegal memory"):
        sample_pdf(bins, weights, 4, backend="cuda")


# ----------------------------------------------------------------------------------------------------------
# Guards that need no stand-in
# ----------------------------------------------------------------------------------------------------------
def test_check_cuda_devices_refuses_mixed_and_non_current_devices():
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)  # names only: no GPU needed
    backend.check_cuda_devices("sampling", "sample_pdf", [cuda0, cuda0], current=0)  # fine
    backend.check_cuda_devices("sampling", "sample_pdf", [cuda1], current=1)  # fine: on the current device
    with pytest.raises(backend.BackendError, match=r"sample_pdf: tensors on different GPUs \(cuda:0, cuda:1\)"):
        backend.check_cuda_devices("sampling", "sample_pdf", [cuda0, cuda1], current=0)
    with pytest.raises(backend.BackendError, match=r"on cuda:1 but the current device is cuda:0.*torch.cuda.device\(1\)"):
        backend.check_cuda_devices("sampling", "sample_pdf", [cuda1, cuda1], current=0)
    with pytest.raises(backend.BackendError, match="every tensor on the GPU, got cpu, cuda:0"):
        backend.check_cuda_devices("sampling", "sample_pdf", [cuda0, torch.device("cpu")], current=0)


@pytest.mark.parametrize("backend_name", ["cuda", "emulated"])
def test_launch_refuses_sizes_beyond_32_bit_indices_naming_the_argument(backend_name):
    small = torch.zeros(4)
    huge = torch.empty(2 ** 31, device="meta")  # 2^31 elements, no memory
    args = (huge, small, small, np.int32(1), np.int32(1), np.int32(1), np.float32(0), small)
    with pytest.raises(backend.BackendError, match=r"sample_pdf: bins has 2147483648 elements.*2\^31 - 1"):
        backend.launch("sampling", "sample_pdf", 1, args, backend_name)
    with pytest.raises(backend.BackendError, match=r"sample_pdf: 2147483648 threads"):
        backend.launch("sampling", "sample_pdf", 2 ** 31, args[1:2] * 3 + args[3:], backend_name)
