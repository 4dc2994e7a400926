"""INSTRUCTOR-ONLY cases: never handed out (course.release leaves course/hidden/ out and refuses a release in which
any of these case names appears). Fresh random inputs at every grading, edge cases, and the requirements the
visible cases leave out (e.g. NeuS's cos_anneal_ratio between 0 and 1, NaN densities in the occupancy update,
batched cameras, lens distortion, gradients)."""
from __future__ import annotations

import numpy as np

from course.cases import Call, Case, f32, intrinsics, look_at, sorted_t


def random_camera(rng) -> np.ndarray:
    eye = rng.normal(size=3)
    eye = 4.0 * eye / np.linalg.norm(eye)
    return look_at(eye, target=rng.normal(size=3) * 0.3, up=(0.0, 0.0, 1.0) if abs(eye[2]) < 3.5 else (0.0, 1.0, 0.0))


def batched_rays(rng):
    n = 5
    K = np.stack([intrinsics(*rng.uniform(20, 80, 2), *rng.uniform(10, 30, 2)) for _ in range(n)])
    c2w = np.stack([random_camera(rng) for _ in range(n)])
    return Call("common.rays", "rays_through_pixels", [K, c2w, f32(rng.uniform(0, 40, n)), f32(rng.uniform(0, 40, n))])


HIDDEN: list[Case] = [
    # positional_encoding: any number of leading dimensions, any D (2 for an image field), L = 0 is the identity
    Case("positional_encoding", "hidden_pe_batched_2d_random_frequencies",
         lambda rng: Call("01_nerf", "positional_encoding",
                          [f32(rng.normal(size=(2, 7, 2)) * 3), int(rng.integers(1, 9))]), weight=2.0, hidden=True,
         what="x (2, 7, 2), random L in 1..8"),
    Case("positional_encoding", "hidden_pe_zero_frequencies_is_the_identity",
         lambda rng: Call("01_nerf", "positional_encoding", [f32(rng.normal(size=(4, 3))), 0]), hidden=True,
         what="L = 0 returns x itself"),
    # ray_generation: off-centre principal point, non-square pixels, batched cameras, distortion
    Case("ray_generation", "hidden_get_rays_random_camera_off_centre",
         lambda rng: Call("common.rays", "get_rays",
                          [intrinsics(*rng.uniform(5, 12, 2), *rng.uniform(1, 5, 2)), random_camera(rng), 6, 7]),
         weight=2.0, hidden=True, what="a random camera pose, fx != fy, principal point off centre, 6 x 7 image"),
    Case("ray_generation", "hidden_rays_through_pixels_batched_cameras", batched_rays, hidden=True,
         what="one camera per ray: K (5, 3, 3), c2w (5, 4, 4)"),
    Case("ray_generation", "hidden_rays_through_pixels_with_distortion",
         lambda rng: Call("common.rays", "rays_through_pixels",
                          [intrinsics(60.0, 60.0, 20.0, 15.0), random_camera(rng), f32(rng.uniform(0, 40, 8)),
                           f32(rng.uniform(0, 30, 8)), f32(rng.uniform(-0.05, 0.05, 4))]),
         hidden=True, what="lens distortion (k1, k2, p1, p2): the pixel is undistorted first"),
    # volume_rendering: opaque and empty rays, gradients
    Case("volume_rendering", "hidden_volume_render_random_with_gradients",
         lambda rng: Call("01_nerf", "volume_render",
                          [f32(rng.exponential(1.0, (6, 11))), f32(rng.uniform(0, 1, (6, 11, 3))), sorted_t(rng, 6, 11),
                           6.5], grad_wrt=(0, 1, 2)),
         weight=2.0, hidden=True, what="6 rays x 11 samples, gradients w.r.t. sigma, rgb and t"),
    Case("volume_rendering", "hidden_volume_render_empty_and_opaque_rays",
         lambda rng: Call("01_nerf", "volume_render",
                          [f32(np.stack([np.zeros(7), np.full(7, 1e3), rng.uniform(0, 5, 7)])),
                           f32(rng.uniform(0, 1, (3, 7, 3))), sorted_t(rng, 3, 7), 6.0]),
         hidden=True, what="an empty ray (opacity 0), an opaque one (all weight on its first sample), a random one"),
    # inverse_cdf_sampling: empty rays, padding 0 with a delta, u at 0 and 1, float64
    Case("inverse_cdf_sampling", "hidden_sample_pdf_empty_bins_and_u_at_the_ends",
         lambda rng: Call("kernels.sampling", "sample_pdf_torch",
                          [f32(np.sort(rng.uniform(0, 4, (3, 7)), -1)),
                           f32(np.stack([np.zeros(6), np.eye(6)[int(rng.integers(6))], rng.uniform(0, 1, 6)])),
                           f32(np.tile(np.concatenate([[0.0], np.sort(rng.uniform(0, 1, 8)), [1.0]]), (3, 1)))]),
         weight=2.0, hidden=True, what="an all-zero ray, a one-bin ray, u = 0 and u = 1"),
    Case("inverse_cdf_sampling", "hidden_sample_pdf_no_padding_float64",
         lambda rng: Call("kernels.sampling", "sample_pdf_torch",
                          [np.sort(rng.uniform(0, 4, (4, 6)), -1), rng.uniform(0.0, 1.0, (4, 5)),
                           np.sort(rng.uniform(0, 1, (4, 12)), -1)], kwargs=dict(padding=0.0)),
         hidden=True, what="padding 0 (mip-NeRF 360's histograms), float64 inputs"),
    # hash_grid_level: a hashed level, points on the faces of the unit cube, gradient w.r.t. the table
    Case("hash_grid_level", "hidden_hash_grid_level_hashed_with_table_gradient",
         lambda rng: Call("04_hashnerf", "hash_grid_level",
                          [f32(np.concatenate([rng.uniform(0, 1, (40, 3)), [[0, 0, 0], [1, 1, 1], [0, 1, 0.5]]])),
                           f32(rng.normal(size=(256, 2))), float(rng.uniform(20, 40)), 41], grad_wrt=(1,)),
         weight=2.0, hidden=True, what="a hashed level (41^3 vertices > 256 rows), cube corners, table gradient"),
    Case("hash_grid_level", "hidden_hash_grid_level_dense_random_scale",
         lambda rng: Call("04_hashnerf", "hash_grid_level",
                          [f32(rng.uniform(0, 1, (25, 3))), f32(rng.normal(size=(4096, 4))), 14.0, 16]),
         hidden=True, what="a dense level of 16^3 vertices, F = 4"),
    # occupancy_update: NaN from the network, decay of 1 and 0.5
    Case("occupancy_update", "hidden_occupancy_update_ignores_nan",
         lambda rng: Call("kernels.ray_marching", "occupancy_update_torch",
                          [f32(rng.uniform(0, 1, 512)), rng.permutation(512)[:50].astype(np.int64),
                           f32(np.where(rng.uniform(size=50) < 0.2, np.nan, rng.uniform(0, 1, 50))),
                           float(rng.uniform(0.5, 1.0))]),
         weight=2.0, hidden=True, what="a NaN new density leaves the decayed value (fmax), random decay"),
    Case("occupancy_update", "hidden_occupancy_update_leaves_other_cells",
         lambda rng: Call("kernels.ray_marching", "occupancy_update_torch",
                          [f32(rng.uniform(0, 1, 216)), rng.permutation(216)[:3].astype(np.int64),
                           f32(np.zeros(3)), 0.5]), hidden=True, what="cells not chosen keep their value"),
    # integrated_pe
    Case("integrated_pe", "hidden_ipe_random_variance",
         lambda rng: Call("02_mipnerf", "integrated_pos_enc",
                          [f32(rng.normal(size=(3, 5, 3))), f32(rng.uniform(0, 0.3, (3, 5, 3))),
                           int(rng.integers(0, 3)), int(rng.integers(4, 9))]),
         weight=2.0, hidden=True, what="random means and variances, min_deg > 0 possible, leading dims (3, 5)"),
    # contraction: the gradient at the origin, far points
    Case("contraction", "hidden_contract_gradient_at_the_origin_and_far_points",
         lambda rng: Call("03_mipnerf360", "contract",
                          [f32(np.concatenate([np.zeros((1, 3)), rng.normal(size=(6, 3)) * 10 ** rng.uniform(-3, 4, (6, 1))]))],
                          grad_wrt=(0,)),
         weight=2.0, atol=1e-4, hidden=True, what="x = 0 (finite gradient), points from 1e-3 to 1e4 away"),
    # distortion_loss: gradients, a delta
    Case("distortion_loss", "hidden_distortion_loss_gradients",
         lambda rng: Call("03_mipnerf360", "distortion_loss",
                          [f32(np.sort(rng.uniform(0, 1, (5, 13)), -1)), f32(rng.uniform(0, 1, (5, 12)))], grad_wrt=(0, 1)),
         weight=2.0, hidden=True, what="unnormalised weights, gradients w.r.t. s and w"),
    Case("distortion_loss", "hidden_distortion_loss_of_a_delta",
         lambda rng: Call("03_mipnerf360", "distortion_loss",
                          [f32(np.linspace(0, 1, 11)[None]), f32(np.eye(10)[int(rng.integers(10))][None])]),
         hidden=True, what="all weight in one interval: only the intra-interval term w^2 ds / 3"),
    # neus_opacity: the annealing, back faces, the 1e-5 guard far from the surface
    Case("neus_opacity", "hidden_neus_alpha_cos_anneal_ratio_between_0_and_1",
         lambda rng: Call("05_instant_neus", "neus_alpha",
                          [f32(rng.uniform(-0.2, 0.2, 30)), f32(rng.uniform(-1, 1, 30)), f32(rng.uniform(0.01, 0.1, 30)),
                           f32(np.asarray(rng.uniform(10, 60))), float(rng.uniform(0.1, 0.9))]),
         weight=2.0, hidden=True, what="random cos (back faces included) and cos_anneal_ratio in (0.1, 0.9)"),
    Case("neus_opacity", "hidden_neus_alpha_far_outside_uses_the_guard",
         lambda rng: Call("05_instant_neus", "neus_alpha",
                          [f32(np.full(8, -2.0)), f32(rng.uniform(-1, 0, 8)), f32(np.full(8, 0.05)),
                           f32(np.asarray(64.0)), 0.0]),
         hidden=True, atol=1e-6, what="deep inside (Phi_s ~ 0): NeuS's 1e-5 guard decides the value"),
]
