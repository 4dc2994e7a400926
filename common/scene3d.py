"""Drawing helpers for a viser 3D scene, shared by the notebooks' 3D cells and the live viewer (common/viewer.py).

    scene = viser.ViserServer(host="127.0.0.1", port=0, verbose=False).scene
    add_cameras(scene, cameras, images)          one frustum per camera, its picture inside
    add_box(scene, aabb)                         the scene box as 12 edges
    add_rays(scene, rays_o, rays_d, t, weights)  rays as segments, their samples as points coloured by weight
    add_points(scene, points, colors)            any point cloud (03's contraction: before and after)
    add_grid_cells(scene, lower_corners, size)   cubes (04's occupied cells), one instanced mesh
    add_mesh(scene, vertices, faces)             a triangle mesh and its vertex normals as short segments
    add_gaussians(scene, means, covs, colors)    3D Gaussians as splats (02's frustums)
    notebook_html(server)                        the scene as one self-contained page for a notebook output
    embed(draw)                                  a notebook cell's scene: a fresh server, draw(scene), the page

Every function takes plain arrays (numpy or torch, float, world coordinates of our scenes) and returns viser's
handles, so a caller can move, hide or remove what it drew. Colours are RGB in 0..255 (viser's uint8), or a
float array in [0, 1] which is converted.

Conventions: our cameras are OpenGL/Blender (x right, y up, looking along -z; common/data/scene.py); viser
draws frustums in OpenCV's convention (x right, y down, looking along +z). `opencv_wxyz` turns the first into
the second: the same camera centre, the rotation multiplied by diag(1, -1, -1) (flip y and z).
"""
from __future__ import annotations

import contextlib
import html
import io
import math

import numpy as np

# viser's default frustum length (0.3) suits a scene of radius ~1; ours are a fraction of the cameras' spread.
FRUSTUM_FRACTION_OF_BOX = 0.04
WEIGHT_COLORMAP = "viridis"  # dark purple (weight 0) .. yellow (the ray's largest weight)
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def _numpy(x, dtype=np.float32) -> np.ndarray:
    """A torch tensor or array-like as a numpy array of dtype (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _colors_uint8(colors, n: int) -> np.ndarray:
    """colors: one RGB triple or (n, 3), ints 0..255 or floats in [0, 1] -> (n, 3) uint8."""
    if hasattr(colors, "detach"):
        colors = colors.detach().cpu().numpy()
    array = np.asarray(colors)
    if np.issubdtype(array.dtype, np.floating):
        array = array * 255.0 if array.size == 0 or array.max() <= 1.0 else array
    array = np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.broadcast_to(array.reshape(-1, 3) if array.ndim > 1 else array, (n, 3)).copy()


def weight_colors(weights) -> np.ndarray:
    """Colours for sample weights: each ray's weights divided by that ray's largest weight, through viridis
    (so every ray shows where *its* surface is, a ray of weights 0.01 included). weights: (R, S) -> (R, S, 3)
    uint8. A ray whose weights are all 0 is drawn in the colour of 0."""
    from matplotlib import colormaps

    weights = _numpy(weights, np.float64)
    largest = weights.max(axis=-1, keepdims=True)
    normalised = np.divide(weights, largest, out=np.zeros_like(weights), where=largest > 0)
    return (colormaps[WEIGHT_COLORMAP](normalised)[..., :3] * 255.0).round().astype(np.uint8)


def opencv_wxyz(c2w) -> np.ndarray:
    """The rotation of an OpenGL camera-to-world matrix (4, 4) or (3, 3), as viser's OpenCV-camera quaternion
    (w, x, y, z): R_cv = R_gl diag(1, -1, -1)."""
    from viser.transforms import SO3

    rotation = _numpy(c2w, np.float64)[:3, :3] @ OPENGL_TO_OPENCV
    return np.asarray(SO3.from_matrix(rotation).wxyz)


def box_edges(aabb) -> np.ndarray:
    """The 12 edges of the axis-aligned box aabb = ((x0, y0, z0), (x1, y1, z1)) as (12, 2, 3) end points."""
    lower, upper = _numpy(aabb).reshape(2, 3)
    corners = np.array([[(upper if (i >> axis) & 1 else lower)[axis] for axis in range(3)] for i in range(8)],
                       dtype=np.float32)  # (8, 3): bit k of the corner index picks lower/upper along axis k
    edges = [(i, i | (1 << axis)) for i in range(8) for axis in range(3) if not (i >> axis) & 1]
    return corners[np.array(edges)]  # (12, 2, 3)


def add_box(scene, aabb, name: str = "/scene_box", color=(230, 120, 20), thickness_px: float = 2.0):
    """The scene box (the region the model represents) as 12 line segments, thickness_px pixels wide on
    screen whatever the zoom. aabb: (2, 3)."""
    return scene.add_line_segments(name, box_edges(aabb), _colors_uint8(color, 1)[0], thickness=thickness_px,
                                   thickness_units="screen")


def add_cameras(scene, cameras, images=None, name: str = "/cameras", scale: float | None = None,
                color=(40, 40, 40), max_image_side: int = 48, every: int = 1):
    """One frustum per camera (common.data.scene.Cameras: c2w (N, 4, 4) OpenGL, K (N, 3, 3), height, width),
    with its image inside when images (N, H, W, C) are given (downsampled by striding to at most
    max_image_side pixels: a notebook stores every picture). every: draw cameras 0, every, 2 every, ...
    scale: the frustum's length in world units (default: a fraction of the cameras' spread).
    Returns the list of frustum handles."""
    c2w_all, K_all = _numpy(cameras.c2w, np.float64), _numpy(cameras.K, np.float64)
    centres = c2w_all[:, :3, 3]
    if scale is None:
        spread = float(np.linalg.norm(centres.max(axis=0) - centres.min(axis=0))) if len(centres) > 1 else 1.0
        scale = FRUSTUM_FRACTION_OF_BOX * max(spread, 1e-3)
    height, width = cameras.height, cameras.width
    stride = max(1, math.ceil(max(height, width) / max_image_side))
    handles = []
    for index in range(0, len(c2w_all), every):
        fy = K_all[index, 1, 1]
        picture = None
        if images is not None:
            picture = _numpy(images[index], np.float32)[::stride, ::stride]
            if picture.shape[-1] == 4:  # RGBA: shown over white, the background NeRF's Blender protocol trains on
                picture = picture[..., :3] * picture[..., 3:] + (1.0 - picture[..., 3:])
            picture = (np.clip(picture, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        handles.append(scene.add_camera_frustum(
            f"{name}/{index:04d}", fov=2.0 * math.atan(0.5 * height / fy), aspect=width / height, scale=scale,
            thickness=1.5, thickness_units="screen", color=_colors_uint8(color, 1)[0], image=picture, format="jpeg" if picture
            is not None else "auto", wxyz=opencv_wxyz(c2w_all[index]), position=centres[index]))
    return handles


def add_rays(scene, rays_o, rays_d, t_vals, weights=None, name: str = "/rays", ray_color=(120, 120, 120),
             point_size: float | None = None):
    """Rays and their samples. rays_o, rays_d: (R, 3); t_vals: (R, S) sample depths along each ray (point =
    o + t d, our rays' convention); weights: (R, S) w_i = T_i alpha_i (Eq. 3 of NeRF), None for grey samples.
    Each ray is one segment from its first to its last sample; each sample a point coloured by
    `weight_colors`. Returns (segments handle, points handle)."""
    rays_o, rays_d, t_vals = _numpy(rays_o), _numpy(rays_d), _numpy(t_vals)
    points = rays_o[:, None, :] + t_vals[..., None] * rays_d[:, None, :]  # (R, S, 3)
    segments = np.stack([points[:, 0], points[:, -1]], axis=1)  # (R, 2, 3)
    length = float(np.linalg.norm(segments[:, 1] - segments[:, 0], axis=-1).max())
    lines = scene.add_line_segments(f"{name}/segments", segments, _colors_uint8(ray_color, 1)[0],
                                    thickness=0.003 * length)
    colors = weight_colors(weights) if weights is not None else _colors_uint8((160, 160, 160), points.size // 3)
    samples = add_points(scene, points.reshape(-1, 3), colors.reshape(-1, 3), f"{name}/samples",
                         point_size=point_size if point_size is not None else 0.012 * length)
    return lines, samples


def add_points(scene, points, colors=(30, 120, 220), name: str = "/points", point_size: float = 0.01):
    """A point cloud. points: (N, 3); colors: one RGB or (N, 3) (0..255, or floats in [0, 1]). float32 positions
    (viser's default float16 moves a point at x = 3 by up to 0.002)."""
    points = _numpy(points).reshape(-1, 3)
    return scene.add_point_cloud(name, points, _colors_uint8(colors, len(points)), point_size=point_size,
                                 precision="float32", point_shape="circle")


def unit_cube() -> tuple[np.ndarray, np.ndarray]:
    """The cube [0, 1]^3: vertices (8, 3) float32, faces (12, 3) uint32 wound counter-clockwise seen from
    outside (normals point out)."""
    vertices = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=np.float32)
    faces = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6],  # z = 0, z = 1
                      [0, 1, 4], [1, 5, 4], [2, 6, 3], [3, 6, 7],  # y = 0, y = 1
                      [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]], dtype=np.uint32)  # x = 0, x = 1
    return vertices, faces


def add_grid_cells(scene, lower_corners, size, colors=(60, 170, 90), name: str = "/grid_cells",
                   opacity: float | None = None):
    """Axis-aligned cubic cells (an occupancy grid's occupied cells): one instanced cube mesh, so that 10^4
    cells cost 10^4 positions, not 10^4 meshes. lower_corners: (N, 3) each cell's minimum corner; size: the
    cells' edge length (one float); colors: one RGB or (N, 3)."""
    lower_corners = _numpy(lower_corners).reshape(-1, 3)
    vertices, faces = unit_cube()
    n = len(lower_corners)
    return scene.add_batched_meshes_simple(
        name, vertices * float(size), faces, batched_wxyzs=np.tile(np.array([1.0, 0, 0, 0], np.float32), (n, 1)),
        batched_positions=lower_corners, batched_colors=_colors_uint8(colors, n), opacity=opacity,
        flat_shading=True, lod="off")


def vertex_normals(vertices, faces) -> np.ndarray:
    """Unit normals at the vertices: the sum of the adjacent faces' cross products (area-weighted), normalised.
    vertices: (V, 3); faces: (F, 3) counter-clockwise seen from outside. Returns (V, 3) float32."""
    vertices, faces = _numpy(vertices, np.float64), np.asarray(_numpy(faces, np.int64))
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    face_normals = np.cross(b - a, c - a)  # (F, 3), length = twice the triangle's area
    normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0).astype(np.float32)


def add_mesh(scene, vertices, faces, normals=None, name: str = "/mesh", color=(200, 200, 200),
             normal_length: float | None = None, normal_every: int = 1, normal_color=(220, 40, 40)):
    """A triangle mesh and its normals as segments from a vertex along its normal. vertices: (V, 3); faces:
    (F, 3); normals: (V, 3) or None (computed by `vertex_normals`); normal_every: draw the normal of one vertex
    in that many; normal_length: default 3% of the mesh's bounding box diagonal; 0 draws none.
    Returns (mesh handle, normals handle or None)."""
    vertices = _numpy(vertices)
    faces = np.asarray(_numpy(faces, np.int64)).astype(np.uint32)
    mesh = scene.add_mesh_simple(f"{name}/surface", vertices, faces, color=_colors_uint8(color, 1)[0],
                                 side="double")
    if normal_length == 0:
        return mesh, None
    normals = vertex_normals(vertices, faces) if normals is None else _numpy(normals)
    if normal_length is None:
        normal_length = 0.03 * float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))
    start = vertices[::normal_every]
    segments = np.stack([start, start + normal_length * normals[::normal_every]], axis=1)  # (V', 2, 3)
    lines = scene.add_line_segments(f"{name}/normals", segments, _colors_uint8(normal_color, 1)[0],
                                    thickness=0.1 * normal_length)
    return mesh, lines


def add_gaussians(scene, means, covariances, colors=(230, 80, 60), opacity: float = 0.6,
                  name: str = "/gaussians"):
    """3D Gaussians drawn as splats (mip-NeRF's conical frustums approximated by Gaussians, Eq. 7-8 of
    mip-NeRF). means: (N, 3); covariances: (N, 3, 3) symmetric positive semi-definite; colors: one RGB or
    (N, 3)."""
    means = _numpy(means).reshape(-1, 3)
    n = len(means)
    return scene.add_gaussian_splats(name, centers=means, covariances=_numpy(covariances).reshape(n, 3, 3),
                                     rgbs=_colors_uint8(colors, n).astype(np.float32) / 255.0,
                                     opacities=np.full((n, 1), opacity, np.float32))


def notebook_html(server, height: int = 420):
    """The server's scene as a self-contained page in an IPython HTML output: viser's client (one HTML file
    shipped in the package, its JavaScript inline) with the scene's messages embedded in it
    (`scene.as_html`), put in an iframe's srcdoc. Nothing is fetched from a network or a server when it is
    shown: the notebook keeps the scene as stored (tests/notebooks checks there is no http(s) URL in it)."""
    from IPython.display import HTML

    page = server.scene.as_html()
    # In a <div>: IPython warns about a bare <iframe> output.
    return HTML(f'<div><iframe srcdoc="{html.escape(page, quote=True)}" width="100%" height="{height}" '
                f'style="border:1px solid #ddd"></iframe></div>')


@contextlib.contextmanager
def quiet_viser():
    """Silence what viser prints while starting and stopping a server (a banner with its address, "Server
    stopped"): it prints through rich, which in Jupyter becomes a display output of the cell, so redirecting
    stdout is not enough; rich's console is made quiet for the duration."""
    import rich

    console = rich.get_console()
    was_quiet, console.quiet = console.quiet, True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        console.quiet = was_quiet


def offline_server():
    """A viser server for building a scene to embed (`notebook_html`): on 127.0.0.1, a port the OS picks,
    its banner (which prints its address) swallowed. No browser needs to connect to it."""
    import viser

    with quiet_viser():
        return viser.ViserServer(host="127.0.0.1", port=0, verbose=False)


VISER_MISSING = "3D scene not drawn: viser is not installed (pip install -r requirements-viewer.txt)"


def embed(draw, height: int = 420, camera=None) -> None:
    """What a notebook's 3D cell ends with: draw(scene) on a fresh `offline_server`, then the self-contained page
    of `notebook_html` displayed as the cell's output (a display output, not the cell's value). camera:
    (position, look_at) of the page's first view, in world coordinates (default: viser's). Where viser is
    not installed, the one line VISER_MISSING instead, so that the notebook still runs top to bottom."""
    try:
        import viser  # noqa: F401
    except ImportError:
        print(VISER_MISSING)
        return
    from IPython.display import display

    server = offline_server()
    try:
        if camera is not None:
            server.initial_camera.position = tuple(float(v) for v in camera[0])
            server.initial_camera.look_at = tuple(float(v) for v in camera[1])
        draw(server.scene)
        display(notebook_html(server, height))
    finally:
        with quiet_viser():
            server.stop()
