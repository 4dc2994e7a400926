"""kernels/hash_encoding: the twin against the CUDA source (emulated on the CPU, CuPy on a GPU), and the properties
of the Instant-NGP hash grid (Müller et al. 2022, Sec. 3).

Tolerances: the forward sums the same 8 products in a different order on each face (float32, features ~1): atol
1e-6. The table gradient is accumulated with atomicAdd in the kernel (order of the sums not fixed): rtol 1e-5
of the largest entry. The position gradient is scale_l (up to ~2000) times sums of products: rtol 1e-5 of the
largest entry.
"""
import pytest
import torch

from kernels import backend as kernel_backend
from kernels.hash_encoding import (HashEncoding, grid_index, hash_encode, hash_encode_torch, is_dense_level,
                                   level_resolutions, level_scales)


def small_encoding(seed=0, n_levels=6, log2_table_size=12, base_resolution=4, max_resolution=128):
    """A grid whose coarse levels are dense (res^3 <= T) and whose fine levels hash; features ~ U(-1, 1)."""
    torch.manual_seed(seed)
    encoding = HashEncoding(n_levels=n_levels, n_features=2, log2_table_size=log2_table_size,
                            base_resolution=base_resolution, max_resolution=max_resolution)
    with torch.no_grad():
        encoding.table.uniform_(-1, 1)  # large features, so that the comparisons below are not trivially small
    return encoding


def random_points(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=generator)  # (N, 3)
    if n >= 32:  # points on the faces x = 0 and x = 1 of the unit box, and its corners
        x[:8] = torch.tensor([[a, b, c] for a in (0.0, 1.0) for b in (0.0, 1.0) for c in (0.0, 1.0)])
        x[8:20, 0] = 0.0
        x[20:32, 1] = 1.0
    return x


def assert_close_relative(actual, expected, rtol):
    scale = expected.abs().max().clamp_min(1e-12)
    difference = (actual - expected).abs().max()
    assert difference <= rtol * scale, f"max difference {difference} > {rtol} * {scale}"


# ----------------------------------------------------------------------------------------------------------
# Level geometry
# ----------------------------------------------------------------------------------------------------------
def test_levels_grow_geometrically_with_the_appendix_a_offsets():
    scales = level_scales(16, 16, 2048).double()
    growth = (scales[1:] + 1) / (scales[:-1] + 1)  # b = (N_l+1 / N_l) with N_l = scale_l + 1
    assert torch.allclose(growth, torch.full_like(growth, (2048 / 16) ** (1 / 15)), rtol=1e-6)
    assert scales[0] == 15 and abs(scales[-1] - 2047) < 1e-3  # N_min - 1 and N_max - 1
    resolutions = level_resolutions(scales.float())
    assert torch.equal(resolutions, (torch.ceil(scales.float()) + 1).int())
    encoding = HashEncoding()
    assert encoding.output_dim == 32 and encoding.table.shape == (16, 2 ** 19, 2)
    assert encoding.table.abs().max() <= 1e-4  # Sec. 4: initialised uniform(-1e-4, 1e-4)


def test_small_encoding_has_dense_and_hashed_levels():
    encoding = small_encoding()
    dense = is_dense_level(encoding.resolutions, encoding.table_size)
    assert dense.any() and not dense.all()


# ----------------------------------------------------------------------------------------------------------
# Twin vs CUDA source (emulated)
# ----------------------------------------------------------------------------------------------------------
def test_forward_matches_emulated_kernel_including_box_faces():
    encoding = small_encoding()
    x = random_points(500)
    with torch.no_grad():
        twin = encoding(x, backend="torch")
        kernel = encoding(x, backend="emulated")
    assert twin.shape == kernel.shape == (500, encoding.output_dim)
    assert torch.isfinite(kernel).all()
    assert torch.allclose(kernel, twin, atol=1e-6, rtol=0)


def test_backward_matches_emulated_kernel_for_table_and_positions():
    encoding = small_encoding()
    x = random_points(500, seed=1)
    grad_out = torch.randn(500, encoding.output_dim, generator=torch.Generator().manual_seed(2))
    grads = {}
    for backend in ("torch", "emulated"):
        x_leaf = x.clone().requires_grad_(True)
        encoded = encoding(x_leaf, backend=backend)
        grads[backend] = torch.autograd.grad(encoded, [x_leaf, encoding.table], grad_out)
    (x_twin, table_twin), (x_kernel, table_kernel) = grads["torch"], grads["emulated"]
    assert_close_relative(table_kernel, table_twin, rtol=1e-5)  # atomicAdd: order of the sums varies
    assert_close_relative(x_kernel, x_twin, rtol=1e-5)


@pytest.mark.parametrize("backend,n_points,rounds", [("torch", 1 << 16, 1), ("emulated", 1 << 20, 6)])
def test_table_gradient_loses_no_update_when_many_points_share_rows(backend, n_points, rounds):
    """Contention: every point sits exactly on vertex (2, 2, 2) of the only level (weight 1 there, 0 at the other 7
    corners), so 8 rows receive N additions each from threads running at the same time, row (2, 2, 2) N additions of
    exactly 1.0. N < 2^24, so float32 holds every partial sum exactly and a single lost update shows. With a plain +=
    instead of the atomicAdd, two OpenMP threads lost 1.7k to 26k of the 2^20 updates per launch whenever they ran at
    the same time; the backward is repeated so that a machine busy with other jobs also gives them that chance."""
    encoding = HashEncoding(n_levels=1, n_features=2, log2_table_size=12, base_resolution=5, max_resolution=5)
    assert encoding.scales.tolist() == [4.0]  # pos = 4 x + 0.5 = 2 exactly at x = 0.375
    x = torch.full((n_points, 3), 0.375)  # (N, 3)
    encoded = encoding(x, backend=backend)  # (N, L*F)
    expected = torch.zeros_like(encoding.table)
    expected[0, 2 + 2 * 5 + 2 * 25] = float(n_points)  # dense row x + y*res + z*res^2
    for _ in range(rounds):
        (grad_table,) = torch.autograd.grad(encoded, encoding.table, torch.ones_like(encoded), retain_graph=True)
        assert torch.equal(grad_table, expected)


def test_kernel_backward_skips_the_position_gradient_when_x_needs_none():
    encoding = small_encoding()
    x = random_points(64)  # requires_grad False
    encoding(x, backend="emulated").square().sum().backward()
    expected = torch.autograd.grad(encoding(x, backend="torch").square().sum(), encoding.table)[0]
    assert x.grad is None
    assert_close_relative(encoding.table.grad, expected, rtol=1e-5)


def test_position_gradient_alone_matches_when_table_is_frozen():
    encoding = small_encoding()
    encoding.table.requires_grad_(False)
    x = random_points(64, seed=3).requires_grad_(True)
    kernel = torch.autograd.grad(encoding(x, backend="emulated").sum(), x)[0]
    twin = torch.autograd.grad(encoding(x, backend="torch").sum(), x)[0]
    assert_close_relative(kernel, twin, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_empty_input_gives_empty_encoding_and_zero_gradients(backend):
    encoding = small_encoding()
    x = torch.zeros(0, 3, requires_grad=True)
    encoded = encoding(x, backend=backend)
    assert encoded.shape == (0, encoding.output_dim)
    encoded.sum().backward()
    assert x.grad.shape == (0, 3)
    assert encoding.table.grad is not None and encoding.table.grad.abs().max() == 0


def test_second_derivative_through_the_kernel_raises_and_names_the_torch_backend():
    encoding = small_encoding()
    x = random_points(16).requires_grad_(True)
    encoded = encoding(x, backend="emulated")
    with pytest.raises(kernel_backend.BackendError, match="backend='torch'"):
        torch.autograd.grad(encoded.sum(), x, create_graph=True)


def test_wrapper_rejects_wrong_dtype_and_unknown_backend():
    encoding = small_encoding()
    with pytest.raises(ValueError, match="float32"):
        encoding(random_points(4).double(), backend="emulated")
    with pytest.raises(kernel_backend.BackendError, match="unknown backend"):
        encoding(random_points(4), backend="tpu")


# ----------------------------------------------------------------------------------------------------------
# Derivatives of the twin (float64)
# ----------------------------------------------------------------------------------------------------------
def tiny_float64_grid():
    """L = 2 levels, T = 2^6: level 0 (res 4, 64 vertices) is dense, level 1 (res 9) hashes."""
    scales = torch.tensor([3.0, 8.0], dtype=torch.float64)
    resolutions = level_resolutions(scales)
    table = torch.empty(2, 64, 2, dtype=torch.float64).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    assert is_dense_level(resolutions, 64).tolist() == [True, False]
    # Points at least 0.05 of a cell from every cell face on every level, so that finite differences stay in a cell.
    candidates = torch.rand(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    frac = (candidates[:, None, :] * scales[None, :, None] + 0.5) % 1.0  # (N, L, 3)
    safe = ((frac > 0.05) & (frac < 0.95)).flatten(1).all(dim=1)
    x = candidates[safe][:5].clone()
    assert len(x) == 5
    return x, table, scales, resolutions


def test_twin_gradcheck_float64():
    x, table, scales, resolutions = tiny_float64_grid()
    x.requires_grad_(True)
    table.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, table: hash_encode_torch(x, table, scales, resolutions), (x, table))


def test_twin_gradgradcheck_float64():
    """The SDF script differentiates the encoding twice (eikonal loss on d(encoding)/dx)."""
    x, table, scales, resolutions = tiny_float64_grid()
    x.requires_grad_(True)
    table.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x, table: hash_encode_torch(x, table, scales, resolutions),
                                        (x, table))


# ----------------------------------------------------------------------------------------------------------
# Properties of the hash grid
# ----------------------------------------------------------------------------------------------------------
def test_encoding_interpolates_the_table_at_a_vertex():
    """At a grid vertex the trilinear weights are (1, 0, ..., 0): the encoding is that vertex's table row."""
    encoding = small_encoding().double()
    level, vertex = 2, torch.tensor([3, 5, 2])
    scale = encoding.scales[level]
    x = ((vertex.double() - 0.5) / scale)[None, :]  # pos = x * scale + 0.5 = vertex (tiny-cuda-nn's offset)
    encoded = hash_encode_torch(x, encoding.table, encoding.scales, encoding.resolutions)  # (1, L*F)
    row = grid_index(vertex, encoding.resolutions[level].long(), encoding.table_size)
    assert torch.allclose(encoded[0, 2 * level:2 * level + 2], encoding.table[level, row], atol=1e-12)


def test_dense_levels_are_collision_free():
    """Every vertex of a dense level's [0, res)^3 gets its own table row (Sec. 3: 1:1 at coarse levels)."""
    encoding = small_encoding()
    for level, res in enumerate(encoding.resolutions.tolist()):
        if res ** 3 > encoding.table_size:
            continue
        axis = torch.arange(res)
        vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        rows = grid_index(vertices, torch.tensor(res), encoding.table_size)
        assert rows.unique().numel() == res ** 3, f"level {level} (res {res}) has collisions"


def table_of_row_numbers(n_levels, table_size):
    """A table whose feature 0 in row r is r: the encoding at a vertex then reads out the row the kernel used."""
    rows = torch.arange(table_size, dtype=torch.float32)
    return torch.stack([rows, -rows], dim=-1)[None].repeat(n_levels, 1, 1).contiguous()  # (L, T, 2)


@pytest.mark.parametrize("backend", ["torch", "emulated"])
def test_hashed_and_dense_rows_match_hand_computed_indices(backend):
    """Vertex (3, 5, 7) on a hashed level (scale 64, res 65, 65^3 > T) and a dense one (scale 16, res 17)."""
    log2_t = 16
    table_size = 2 ** log2_t
    # Eq. 4 by hand: uint32 products, then XOR, then mod T.
    y_term = (5 * 2654435761) % 2 ** 32  # = 387276917
    z_term = (7 * 805459861) % 2 ** 32  # = 1343251731
    hashed_row = (3 ^ y_term ^ z_term) % table_size
    dense_row = 3 + 5 * 17 + 7 * 17 * 17  # x + y*res + z*res^2 = 2111
    assert (y_term, z_term, dense_row) == (387276917, 1343251731, 2111)

    scales = torch.tensor([64.0, 16.0])
    resolutions = level_resolutions(scales)
    assert resolutions.tolist() == [65, 17]
    table = table_of_row_numbers(2, table_size)
    # x = (vertex - 0.5) / scale is exact in float32 here, so pos lands exactly on the vertex for both levels.
    vertex = torch.tensor([3.0, 5.0, 7.0])
    encoded_hashed = hash_encode(((vertex - 0.5) / 64.0)[None], table, scales, resolutions, backend)
    encoded_dense = hash_encode(((vertex - 0.5) / 16.0)[None], table, scales, resolutions, backend)
    assert encoded_hashed[0, 0].item() == hashed_row
    assert encoded_dense[0, 2].item() == dense_row


# ----------------------------------------------------------------------------------------------------------
# CUDA through CuPy
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_forward_and_backward_match_twin():
    encoding = small_encoding(n_levels=8, log2_table_size=14, base_resolution=8, max_resolution=512).cuda()
    x = random_points(4096, seed=5).cuda()
    grad_out = torch.randn(4096, encoding.output_dim, generator=torch.Generator().manual_seed(6)).cuda()
    results = {}
    for backend in ("torch", "cuda"):
        x_leaf = x.clone().requires_grad_(True)
        encoded = encoding(x_leaf, backend=backend)
        results[backend] = (encoded.detach(), *torch.autograd.grad(encoded, [x_leaf, encoding.table], grad_out))
    (out_twin, x_twin, table_twin), (out_cuda, x_cuda, table_cuda) = results["torch"], results["cuda"]
    # nvcc fuses the trilinear sums into fma (the cell lookup itself is not fused): a few ulp of difference.
    assert torch.allclose(out_cuda, out_twin, atol=1e-5, rtol=0)
    assert_close_relative(table_cuda, table_twin, rtol=1e-5)
    assert_close_relative(x_cuda, x_twin, rtol=1e-4)
