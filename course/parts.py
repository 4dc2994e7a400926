"""The parts of the course assignment: which marked region a student writes, its hint, its points and its tests.

The solution and the assignment are the same source. Each graded piece is marked, inside the code, with nbgrader's
markers around the BODY of one function (signature and docstring stay, so the student sees the shapes):

    def positional_encoding(x, n_freqs):
        \"\"\"...docstring...\"\"\"
        ### BEGIN SOLUTION
        ...the reference code...
        ### END SOLUTION

The markers are plain comments: the solution runs unchanged and CI tests it. `course/release.py` replaces each
marked body by `raise PartNotWritten(part, file, function, hint)` (course/unwritten.py; the hint below), and
`course/grade.py` grades each part on its cases (course/cases.py, course/hidden/).

Adding a part: mark the function body in the script, add one `Part(...)` line to PARTS naming the file, the
function, a one-line hint with the equation, the points and the visible pytest node ids (parity or property tests
that call only that function and code that is not marked; they ship with the release for the students), then its
cases: visible ones in course/cases.py, hidden ones in course/hidden/cases.py. The release refuses a marked region
that no part names, and a part whose region is not marked.
"""
from dataclasses import dataclass

BEGIN_MARKER = "### BEGIN SOLUTION"  # nbgrader's markers (ClearSolutions' defaults), in .py files and notebooks
END_MARKER = "### END SOLUTION"


@dataclass(frozen=True)
class Region:
    file: str  # path relative to the repository root
    function: str  # the function whose body is marked (a method: "Class.method")
    hint: str  # one line naming the equation; the student's release raises PartNotWritten with it


@dataclass(frozen=True)
class Part:
    name: str
    points: int
    regions: tuple[Region, ...]  # all of them are the student's to write for this part
    tests: tuple[str, ...]  # the visible pytest node ids that check the same ideas (run by students, not the grader)
    timeout_s: int = 60  # the part's time in the grader's worker: an endless loop fails this part only


PARTS: tuple[Part, ...] = (
    Part("positional_encoding", 10, (
        Region("01_nerf.py", "positional_encoding",
               ("Eq. 4 of NeRF without the pi, laid out per frequency: [x, sin(x), cos(x), sin(2x), cos(2x), ..., "
               "sin(2^(L-1) x), cos(2^(L-1) x)], each sin/cos block holding all D coordinates of x")),),
        ("tests/scripts/test_01_nerf.py::test_positional_encoding_equals_eq_4_written_out_per_frequency_and_coordinate",)),
    Part("ray_generation", 10, (
        Region("common/rays.py", "rays_through_pixels",
               "Pinhole camera: d = R_c2w ((u - cx) / fx, -(v - cy) / fy, -1), o = the c2w translation"),
        Region("common/rays.py", "get_rays",
               "One ray through each pixel centre (col + 0.5, row + 0.5), row-major, with rays_through_pixels")),
        ("tests/common/test_rays.py::test_central_pixel_ray_of_a_camera_looking_at_the_origin_passes_through_it",
         "tests/common/test_rays.py::test_ray_directions_agree_with_projecting_points_through_K_and_c2w",
         "tests/common/test_rays.py::test_get_rays_uses_pixel_centres_in_row_major_order_with_unit_camera_z")),
    Part("volume_rendering", 20, (
        Region("01_nerf.py", "volume_render",
               "Eq. 3 of NeRF: C(r) = sum_i T_i (1 - exp(-sigma_i delta_i)) c_i, T_i = exp(-sum_{j<i} sigma_j delta_j)"),),
        ("tests/scripts/test_01_nerf.py::test_dense_volume_render_equals_the_packed_composite_kernel_forward_and_backward",)),
    Part("inverse_cdf_sampling", 20, (
        Region("kernels/sampling.py", "sample_pdf_torch",
               "Eq. 5 / Sec. 5.2 of NeRF: invert the piecewise-linear CDF of (w + PDF_PADDING) at each u"),),
        ("tests/kernels/test_sampling.py::test_sample_pdf_emulated_matches_twin_on_positive_weights",
         "tests/kernels/test_sampling.py::test_sample_pdf_emulated_matches_twin_with_empty_bins",
         "tests/kernels/test_sampling.py::test_sample_pdf_emulated_matches_twin_on_edge_inputs",
         "tests/kernels/test_sampling.py::test_sample_pdf_with_all_mass_in_one_bin_puts_every_sample_in_it",
         "tests/kernels/test_sampling.py::test_sample_pdf_histogram_follows_the_pdf",
         "tests/kernels/test_sampling.py::test_sample_pdf_twin_works_in_float64_like_float32")),
    Part("hash_grid_level", 25, (
        Region("04_hashnerf.py", "hash_grid_level",
               "Eq. 2-4 of Instant-NGP: x * scale + 0.5, 8 cell corners, dense row or spatial hash mod T, trilinear"),),
        ("tests/scripts/test_04_hashnerf.py::test_the_one_level_hash_encoding_on_the_page_equals_each_level_of_the_fast_encoding",)),
    Part("occupancy_update", 15, (
        Region("kernels/ray_marching.py", "occupancy_update_torch",
               "Instant-NGP Appendix E.2: density[c] = max(decay * density[c], new) on the chosen cells only"),),
        ("tests/kernels/test_ray_marching.py::test_occupancy_update_is_decay_then_max_over_several_random_updates",
         "tests/kernels/test_ray_marching.py::test_occupancy_update_kernel_matches_twin_decayed_max",
         "tests/scripts/test_04_hashnerf.py::test_grid_policy_carves_a_sphere_then_refreshes_only_the_chosen_cells[torch]")),
    Part("integrated_pe", 10, (
        Region("02_mipnerf.py", "integrated_pos_enc",
               "Eq. 14 of mip-NeRF: E[sin(2^l x)] = sin(2^l mu) exp(-4^l var / 2), cos as sin(. + pi/2), l = min..max-1"),),
        ("tests/scripts/test_02_mipnerf.py::test_ipe_with_zero_variance_is_the_positional_encoding",
         "tests/scripts/test_02_mipnerf.py::test_ipe_is_the_expected_encoding_under_the_gaussian")),
    Part("contraction", 10, (
        Region("03_mipnerf360.py", "contract",
               "Eq. 10 of mip-NeRF 360: x inside the unit ball, (2 - 1/|x|) x/|x| outside; keep the gradient finite at 0"),),
        ("tests/scripts/test_03_mipnerf360_pieces.py::test_contraction_is_the_identity_inside_the_unit_ball",
         "tests/scripts/test_03_mipnerf360_pieces.py::test_contraction_maps_all_of_space_inside_radius_2",
         "tests/scripts/test_03_mipnerf360_pieces.py::test_inverse_contraction_round_trips",
         "tests/scripts/test_03_mipnerf360_pieces.py::test_contraction_gradient_is_finite_at_the_origin")),
    Part("distortion_loss", 10, (
        Region("03_mipnerf360.py", "distortion_loss",
               "Eq. 15 of mip-NeRF 360 in linear time: inter-interval term with prefix sums, plus (1/3) sum w_i^2 ds_i"),),
        ("tests/scripts/test_03_mipnerf360_pieces.py::test_distortion_loss_linear_form_equals_the_quadratic_definition",
         "tests/scripts/test_03_mipnerf360_pieces.py::test_distortion_loss_of_a_delta_and_of_spread_weights")),
    Part("neus_opacity", 10, (
        Region("05_instant_neus.py", "neus_alpha",
               ("Eq. 13 of NeuS with its code's 1e-5 guard: alpha = clamp((Phi_s(f_i) - Phi_s(f_i+1) + 1e-5) / "
               "(Phi_s(f_i) + 1e-5), 0, 1), f_i, f_i+1 = f -+ slope * delta / 2, "
               "slope = -(relu((1 - cos) / 2) (1 - r) + relu(-cos) r), r = cos_anneal_ratio")),),
        ("tests/scripts/test_05_instant_neus.py::test_neus_opacity_of_a_plane_telescopes_to_the_closed_form_and_peaks_at_the_surface",
         "tests/scripts/test_05_instant_neus.py::test_cell_opacity_is_the_opacity_of_a_step_straight_into_the_surface")),
    Part("image_field", 10, (
        Region("01_nerf.py", "image_field",
               ("An image as a field (Eq. 4 of NeRF on 2-D pixel coordinates): rgb = sigmoid(W_K relu(... relu(W_0 "
                "gamma(x) + b_0) ...) + b_K), gamma = positional_encoding(x, L), layers = (W_0, b_0, ..., W_K, b_K)")),),
        ("tests/scripts/test_01_nerf.py::test_image_field_is_the_mlp_on_the_encoded_coordinates",
         "tests/scripts/test_01_nerf.py::test_fitting_an_image_with_positional_encoding_beats_plain_coordinates")),
    Part("transmittance", 10, (
        Region("01_nerf.py", "transmittance",
               "Eq. 3 of NeRF: T_i = exp(-sum_{j<i} sigma_j delta_j), an exclusive cumulative sum, so T_1 = 1"),),
        ("tests/scripts/test_01_nerf.py::test_transmittance_by_hand_is_the_product_of_the_survival_of_each_interval_before",)),
    Part("sphere_tracing", 15, (
        Region("05_instant_neus.py", "sphere_trace",
               ("Sphere tracing (Hart 1996): from t = near, test |f(o + t d)| < eps (hit) then step t += |f| / |d|, "
                "until a hit, t > far or n_steps; return (t of the hit or far, hit)")),),
        ("tests/scripts/test_05_instant_neus.py::test_sphere_trace_finds_the_closed_form_hits_of_a_sphere_a_plane_and_a_box",)),
)


# The parts each lesson's `--quick` run calls (CPU, --backend auto, which in a release is torch; 01-03 measured with --iters 2): a release with these solved runs the
# lesson to the end; without one of them the lesson stops, in one line, at the first it reaches. Measured on a
# release with exactly these parts solved and all others blank (tests/course checks 01's row on every CI run).
LESSON_PARTS: dict[str, tuple[str, ...]] = {
    "01_nerf.py": ("ray_generation", "positional_encoding", "volume_rendering", "inverse_cdf_sampling"),
    "02_mipnerf.py": ("ray_generation", "integrated_pe", "inverse_cdf_sampling"),
    "03_mipnerf360.py": ("ray_generation", "contraction", "distortion_loss"),
    "04_hashnerf.py": ("ray_generation", "occupancy_update"),  # measured with --iters 20 (quick: grid updates every 8 steps)
    "05_instant_neus.py": ("ray_generation", "neus_opacity", "occupancy_update"),  # --iters 20 likewise
}


@dataclass(frozen=True)
class NotebookExercise:
    """An ungraded exercise in a notebook: one marked region in a code cell, cleared by nbgrader's ClearSolutions.
    The cell asserts its own result against the library, so the student sees at once whether it is right."""
    notebook: str
    hint: str


NOTEBOOK_EXERCISES: tuple[NotebookExercise, ...] = (
    NotebookExercise("notebooks/01_nerf.ipynb", "the closed-form opacity of a constant slab: integrate Eq. 1 of NeRF"),
    NotebookExercise("notebooks/04_hashnerf.ipynb", "Eq. 4 of Instant-NGP for one vertex: XOR of uint32 products"),
)


def part_named(name: str) -> Part:
    for part in PARTS:
        if part.name == name:
            return part
    raise KeyError(name)
