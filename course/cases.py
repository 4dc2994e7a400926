"""The graded cases: what the grader asks a student's function to compute, and how close the answer must be.

A case builds a `Call` (a module, a function, its arguments as numpy arrays and plain numbers) from a random
generator. The grader (course/grade.py) sends the call to the student's sandboxed worker, runs the same call on the
solution in its own process, and compares the two answers output by output (shape, then values within
rtol/atol, gradients included where the case asks for them). A part's points are shared among its cases by weight.

Two kinds of cases:
- the VISIBLE ones below ship with the release: their inputs come from a fixed seed, so a student can read exactly
  what is checked (the project's own tests in tests/ check the same ideas against the library);
- the HIDDEN ones live in course/hidden/ (instructor-only, never released: `course.release` refuses to write a
  release that contains them). They draw fresh random inputs at every grading (the seed is in the results) and
  test the edge cases and the requirements the visible ones leave out.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Call:
    module: str  # importable from the repository root: "01_nerf", "common.rays", ...
    function: str
    args: list  # numpy arrays, numbers, or None
    kwargs: dict = field(default_factory=dict)
    grad_wrt: tuple = ()  # positions of array arguments whose gradient (of a random projection of the outputs) counts


@dataclass(frozen=True)
class Case:
    part: str
    name: str
    make: Callable[[np.random.Generator], Call]
    weight: float = 1.0
    rtol: float = 1e-4
    atol: float = 1e-5
    hidden: bool = False
    what: str = ""  # one line for the feedback: what the case checks

    def seed(self) -> int:
        """The fixed seed of a visible case (from its name, so reordering cases changes nothing)."""
        return zlib.crc32(self.name.encode())


def f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """A camera-to-world matrix in the OpenGL convention of common/rays.py (camera looks down its -z)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, eye
    return f32(c2w)


def intrinsics(focal_x, focal_y, cx, cy) -> np.ndarray:
    return f32([[focal_x, 0, cx], [0, focal_y, cy], [0, 0, 1]])


def sorted_t(rng, rays, samples, near=2.0, far=6.0) -> np.ndarray:
    return f32(np.sort(rng.uniform(near, far, (rays, samples)), axis=-1))


# ---------------------------------------------------------------------------------------------------------------
# Visible cases (fixed seeds): the same ideas as the part's tests in tests/
# ---------------------------------------------------------------------------------------------------------------
VISIBLE: list[Case] = [
    Case("positional_encoding", "pe_three_coordinates_four_frequencies",
         lambda rng: Call("01_nerf", "positional_encoding", [f32(rng.normal(size=(5, 3))), 4]),
         what="x (5, 3), L = 4: [x, sin(x), cos(x), sin(2x), cos(2x), ...], each block holding all 3 coordinates"),
    Case("ray_generation", "get_rays_of_a_camera_looking_at_the_origin",
         lambda rng: Call("common.rays", "get_rays", [intrinsics(5.0, 5.0, 2.5, 2.0), look_at((0.0, -4.0, 1.0)), 4, 5]),
         what="a 4 x 5 image, camera at (0, -4, 1) looking at the origin: origins and directions of all 20 rays"),
    Case("ray_generation", "rays_through_given_pixels",
         lambda rng: Call("common.rays", "rays_through_pixels",
                          [intrinsics(50.0, 50.0, 20.0, 16.0), look_at((3.0, 1.0, 2.0)),
                           f32(rng.uniform(0, 40, 6)), f32(rng.uniform(0, 32, 6))]),
         what="6 points (u, v) of a 40 x 32 image through one camera"),
    Case("volume_rendering", "volume_render_values_and_gradients",
         lambda rng: Call("01_nerf", "volume_render",
                          [f32(rng.uniform(0, 2, (4, 8))), f32(rng.uniform(0, 1, (4, 8, 3))), sorted_t(rng, 4, 8), 6.0],
                          grad_wrt=(0, 1)),
         what="4 rays x 8 samples: weights, opacity, color, depth, and their gradients w.r.t. sigma and rgb"),
    Case("inverse_cdf_sampling", "sample_pdf_positive_weights",
         lambda rng: Call("kernels.sampling", "sample_pdf_torch",
                          [f32(np.sort(rng.uniform(2, 6, (3, 9)), -1)), f32(rng.uniform(0.1, 1, (3, 8))),
                           f32(np.sort(rng.uniform(0, 1, (3, 16)), -1))]),
         what="3 rays, 8 bins with positive weights, 16 sorted u each, NeRF's padding 1e-5"),
    Case("hash_grid_level", "hash_grid_level_dense",
         lambda rng: Call("04_hashnerf", "hash_grid_level",
                          [f32(rng.uniform(0, 1, (32, 3))), f32(rng.normal(size=(512, 2))), 6.0, 8]),
         what="a dense level (8^3 vertices <= 512 rows), 32 points, F = 2"),
    Case("occupancy_update", "occupancy_update_decayed_max",
         lambda rng: Call("kernels.ray_marching", "occupancy_update_torch",
                          [f32(rng.uniform(0, 1, 64)), rng.permutation(64)[:20].astype(np.int64),
                           f32(rng.uniform(0, 1, 20)), 0.95]),
         what="a 4^3 grid, 20 distinct cells updated with decay 0.95"),
    Case("integrated_pe", "ipe_with_zero_variance",
         lambda rng: Call("02_mipnerf", "integrated_pos_enc", [f32(rng.normal(size=(6, 3))), f32(np.zeros((6, 3))), 0, 4]),
         what="zero variance, degrees 0..3: the positional encoding in IPE's layout"),
    Case("contraction", "contract_inside_and_outside",
         lambda rng: Call("03_mipnerf360", "contract", [f32(rng.normal(size=(16, 3)) * 2.0)]),
         what="16 points, some inside the unit ball, some outside"),
    Case("distortion_loss", "distortion_loss_random_histograms",
         lambda rng: Call("03_mipnerf360", "distortion_loss",
                          [f32(np.sort(rng.uniform(0, 1, (4, 9)), -1)), f32(rng.dirichlet(np.ones(8), 4))]),
         what="4 rays, 8 intervals, weights summing to 1"),
    Case("neus_opacity", "neus_alpha_of_a_plane_annealed",
         lambda rng: Call("05_instant_neus", "neus_alpha",
                          [f32(np.linspace(0.3, -0.3, 12)), f32(np.full(12, -1.0)), f32(np.full(12, 0.05)),
                           f32(np.asarray(20.0)), 1.0]),
         what="a ray straight into a plane (cos = -1), cos_anneal_ratio = 1"),
]


def all_cases(include_hidden: bool = True) -> list[Case]:
    """The visible cases and, where course/hidden is present (the instructor's copy), the hidden ones."""
    cases = list(VISIBLE)
    if include_hidden:
        try:
            from course.hidden.cases import HIDDEN
        except ImportError:  # a student's release: no hidden cases
            HIDDEN = []
        cases += HIDDEN
    return cases


def cases_of(part: str, cases: list[Case]) -> list[Case]:
    return [case for case in cases if case.part == part]

