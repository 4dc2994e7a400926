"""A live 3D viewer of a NeRF: move the camera in a browser, see the model's render from there.

    python 01_nerf.py --quick --viewer                  # during training (any script), http://localhost:8080
    python -m common.viewer runs/01_nerf/builtin        # a finished run: its latest checkpoint and config
    ssh -L 8080:localhost:8080 you@remote               # on a remote machine: forward the port, open localhost:8080

The page (viser's client, served by the `viser` package) shows the training cameras as frustums and the scene
box (drawn by common/scene3d.py), and behind them the model's render from the browser's
camera: RGB, depth (turbo colours between the scene's near and far bounds, white where the ray hits nothing),
or normals where the script renders them (05). During training it also shows the step, the training PSNR and
the frame time.

How it shares the CPU/GPU with training: frames are rendered in the training loop's own thread, between two
steps (`Viewer.poll`, called by common.training.TrainingRun.log), never concurrently with a step, so a frame
always sees the weights of one step and no lock is needed. Without a connected browser, poll() does nothing
but ask viser for its list of clients (no message is queued): training runs at its usual speed
(benchmarks/viewer_cost.py measures it). With a browser, a frame is rendered when its camera moved, and the
current view again every `refresh_s` seconds as the model learns; that time is paused in the run's clock
(elapsed_s, --time_budget_s count training only). Frames are small (the long side `resolution` pixels,
upscaled by the browser) so that a CPU keeps up: the frame time is shown on the page.
"""
from __future__ import annotations

import importlib
import math
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, warn

DEFAULT_PORT = 8080  # viser's default
PORT_RANGE = (1024, 65535)  # below 1024 needs root on Linux
DEFAULT_RESOLUTION = 64  # long side of a frame in pixels (README "See it in 3D": the frame times measured)
REFRESH_S = 2.0  # during training, the current view is rendered again this often (the model changes)
LABEL_EVERY_S = 0.5  # the step / PSNR text is updated at most this often
MAX_DRAWN_CAMERAS = 50  # more training cameras are thinned to about this many frustums
VISER_MISSING = "--viewer needs viser: pip install -r requirements-viewer.txt"


def viser_available() -> None:
    """UserError (one line) where viser is not installed."""
    try:
        import viser  # noqa: F401
    except ImportError:
        raise UserError(VISER_MISSING) from None


def check_port_free(port: int, host: str = "0.0.0.0") -> None:
    """One clear line (UserError) if another program listens on `port`: viser itself would silently move to the
    next free port, and the address the user typed would show someone else's page or nothing."""
    if not PORT_RANGE[0] <= port <= PORT_RANGE[1]:
        raise UserError(f"--viewer_port {port} is out of range: it must be in {PORT_RANGE[0]}..{PORT_RANGE[1]}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"--viewer_port {port} is busy ({err.strerror}: another viewer or program listens "
                            f"there): pass a free one, e.g. --viewer_port {port + 1}") from None


def viewer_c2w(position, wxyz) -> torch.Tensor:
    """viser's camera (OpenCV: x right, y down, looking along +z; wxyz its rotation to the world) as our OpenGL
    camera-to-world matrix (x right, y up, looking along -z): R_gl = R_cv diag(1, -1, -1). Returns (4, 4)."""
    from viser.transforms import SO3

    from common.scene3d import OPENGL_TO_OPENCV

    c2w = np.eye(4)
    c2w[:3, :3] = SO3(np.asarray(wxyz, np.float64)).as_matrix() @ OPENGL_TO_OPENCV
    c2w[:3, 3] = np.asarray(position, np.float64)
    return torch.from_numpy(c2w).float()


def frame_intrinsics(fov: float, aspect: float, long_side: int) -> tuple[torch.Tensor, int, int]:
    """A pinhole K for the browser's camera: vertical field of view `fov` (radians), aspect = width / height,
    the longer image side `long_side` pixels. Returns K (3, 3), H, W."""
    if aspect >= 1:
        width, height = long_side, max(1, round(long_side / aspect))
    else:
        width, height = max(1, round(long_side * aspect)), long_side
    focal = 0.5 * height / math.tan(0.5 * fov)
    K = torch.tensor([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])
    return K, height, width


def view_renderer_from_rays(render_rays_fn):
    """A ray renderer (rays_o (R, 3), rays_d (R, 3)) -> dict of (R, ...) tensors, with its `.chunk`, as a view
    renderer (K, c2w, H, W) -> dict of (H, W, ...) tensors, the form 02_mipnerf.py uses (its cones need K)."""
    from common.rays import get_rays, render_image

    def render_view(K, c2w, H, W):
        rays_o, rays_d = get_rays(K, c2w, H, W)
        out = render_image(render_rays_fn, rays_o, rays_d, chunk=getattr(render_rays_fn, "chunk", 4096))
        return {key: value.reshape(H, W, *value.shape[1:]) for key, value in out.items()}

    return render_view


def frame_picture(out: dict, mode: str, near: float, far: float) -> np.ndarray:
    """The picture shown for a render `out` (H, W, ...) tensors: 'rgb' as rendered, 'depth' through
    common.video.colorize_depth (turbo from near to far, white where opacity < 0.5), 'normal' as (n + 1) / 2.
    Returns (H, W, 3) uint8."""
    from common.video import colorize_depth, to_uint8

    if mode == "depth":
        return to_uint8(colorize_depth(out["depth"], near, far, opacity=out.get("opacity")))
    if mode == "normal":
        return to_uint8((out["normal"][..., :3] + 1.0) * 0.5)
    return to_uint8(out["rgb"][..., :3])


class Viewer:
    """A viser server showing a scene's training cameras and a model's renders from each browser's camera.

    viewer = Viewer(render_view, scene, port=8080)   # render_view(K, c2w, H, W) -> {'rgb', 'depth', ...}
    viewer.poll(step, psnr)    # in the training loop: renders the frames that are due (see the module docstring)
    viewer.serve(stop)         # a finished model: poll until stop() is true
    viewer.close()
    """

    def __init__(self, render_view, scene, port: int = DEFAULT_PORT, host: str = "0.0.0.0", title: str = "",
                 resolution: int = DEFAULT_RESOLUTION, refresh_s: float = REFRESH_S, modes=("rgb", "depth")):
        try:
            import viser
        except ImportError:
            raise UserError(VISER_MISSING) from None
        from common import scene3d

        check_port_free(port, host)
        self.render_view, self.refresh_s = render_view, refresh_s
        self.near, self.far = float(scene.near), float(scene.far)
        with scene3d.quiet_viser():  # viser's banner; we print one line of our own
            self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.port = self.server.get_port()
        self.frames_rendered = 0
        self.last_frame: np.ndarray | None = None
        self.last_frame_s = math.nan
        self._step, self._psnr = None, None
        self._model_version = 0  # bumped by poll(step=...): frames older than this are stale
        self._lock = threading.Lock()  # guards _moved and _shown (viser's threads write them too)
        self._moved: set[int] = set()
        self._shown: dict[int, tuple[int, float]] = {}  # client id -> (model version, time) of its last frame
        self._last_label = 0.0
        self._warned = False

        split = scene.splits["train"]
        cams = split.cameras
        self._home = cams.c2w[0].double().numpy()
        self._home_fov = 2.0 * math.atan(0.5 * cams.height / float(cams.K[0, 1, 1]))
        self._centre = scene.aabb.double().mean(dim=0).numpy()
        up = cams.c2w[:, :3, 1].double().mean(dim=0).numpy()  # the cameras' mean image-up direction
        self.server.scene.set_up_direction(tuple(up / max(np.linalg.norm(up), 1e-9)))
        every = max(1, math.ceil(len(cams) / MAX_DRAWN_CAMERAS))
        # wireframes only: the training pictures inside the frustums would hide the render behind them
        self._drawings = [*scene3d.add_cameras(self.server.scene, cams, None, name="/training_cameras",
                                               every=every),
                          scene3d.add_box(self.server.scene, scene.aabb)]

        gui = self.server.gui
        if title:
            gui.add_markdown(f"**{title}**")
        self.mode = gui.add_dropdown("show", tuple(modes), initial_value=modes[0])
        self.resolution = gui.add_slider("resolution (px)", min=16, max=512, step=16, initial_value=resolution)
        self.show_scene = gui.add_checkbox("cameras and box", initial_value=True)
        self.status = gui.add_markdown("waiting for the first frame")
        self.show_scene.on_update(lambda _: self._set_drawings_visible(self.show_scene.value))
        self.mode.on_update(lambda _: self._all_moved())
        self.resolution.on_update(lambda _: self._all_moved())
        self.server.on_client_connect(self._connected)
        self.server.on_client_disconnect(lambda client: self._forget(client.client_id))

    # -- viser's threads call these: they only record what changed --
    def _connected(self, client) -> None:
        forward = -self._home[:3, 2]
        distance = max(float(np.dot(self._centre - self._home[:3, 3], forward)), 1e-3)
        # start at training camera 0, looking where it looks: a view the model was trained for, inside the scene's
        # near/far bounds (from farther away, the far bound would cut the object off)
        position = self._home[:3, 3]
        with client.atomic():
            client.camera.fov = self._home_fov
            client.camera.position = position
            client.camera.look_at = position + distance * forward
            client.camera.up_direction = self._home[:3, 1]
        client.camera.on_update(lambda camera: self._mark_moved(client.client_id))
        self._mark_moved(client.client_id)

    def _set_drawings_visible(self, visible: bool) -> None:
        for handle in self._drawings:
            handle.visible = visible

    def _mark_moved(self, client_id: int) -> None:
        with self._lock:
            self._moved.add(client_id)

    def _all_moved(self) -> None:
        with self._lock:
            self._moved.update(self.server.get_clients().keys())

    def _forget(self, client_id: int) -> None:
        with self._lock:
            self._moved.discard(client_id)
            self._shown.pop(client_id, None)

    # -- the training loop's thread --
    def poll(self, step: int | None = None, psnr: float | None = None) -> float:
        """Record the training step (a new model) and render the frames that are due: a client's camera moved,
        or its frame is older than refresh_s and the model changed since. Returns the seconds spent."""
        start = time.perf_counter()
        if step is not None:
            self._step, self._psnr = step, psnr
            self._model_version += 1
        clients = self.server.get_clients()
        if not clients:  # nobody looks: no message for viser's thread to send (it would take the GIL from training)
            return time.perf_counter() - start
        if step is not None and start - self._last_label >= LABEL_EVERY_S:
            self._last_label = start
            self._show_status()
        with self._lock:
            due = {cid for cid in self._moved if cid in clients}
            self._moved -= due
            shown = list(self._shown.items())  # viser's thread removes clients that leave
        for cid, (version, when) in shown:
            if cid in clients and version < self._model_version and start - when >= self.refresh_s:
                due.add(cid)
        for cid in due:
            try:
                self._render_for(clients[cid])
            except Exception as err:  # a frame that fails must not stop a training run: say so once, go on
                if not self._warned:
                    warn(f"viewer: a frame failed ({type(err).__name__}: {err}); training goes on")
                    self._warned = True
        return time.perf_counter() - start

    def serve(self, stop, idle_s: float = 0.02) -> None:
        """Serve a model that no longer changes until stop() returns True."""
        while not stop():
            frames = self.frames_rendered
            self.poll()
            if self.frames_rendered == frames:
                time.sleep(idle_s)

    def _render_for(self, client) -> None:
        camera = client.camera
        K, H, W = frame_intrinsics(camera.fov, camera.aspect, int(self.resolution.value))
        c2w = viewer_c2w(camera.position, camera.wxyz)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.render_view(K, c2w, H, W)
        picture = frame_picture(out, self.mode.value, self.near, self.far)
        self.last_frame_s = time.perf_counter() - start
        client.scene.set_background_image(picture, format="jpeg", jpeg_quality=90)
        self.last_frame, self.frames_rendered = picture, self.frames_rendered + 1
        with self._lock:
            self._shown[client.client_id] = (self._model_version, time.perf_counter())
        self._show_status()

    def _show_status(self) -> None:
        parts = []
        if self._step is not None:
            parts.append(f"step {self._step}")
        if self._psnr is not None and math.isfinite(self._psnr):
            parts.append(f"PSNR {self._psnr:.2f} dB (training batch)")
        if math.isfinite(self.last_frame_s) and self.last_frame is not None:
            h, w = self.last_frame.shape[:2]
            parts.append(f"frame {1000 * self.last_frame_s:.0f} ms at {w}x{h}")
        self.status.content = " · ".join(parts) or "waiting for the first frame"

    def close(self) -> None:
        from common.scene3d import quiet_viser

        with quiet_viser():  # viser's "Server stopped"
            self.server.stop()


def start_viewer(cfg, scene, render_view, title: str) -> Viewer:
    """The Viewer of a script's run (--viewer): port cfg.viewer_port, RGB and depth (and normals when the
    script's renders have them), one line saying where to open it."""
    modes = ("rgb", "depth")
    K, H, W = frame_intrinsics(0.7, 1.0, 2)
    with torch.inference_mode():  # a 2x2 frame: which pictures does this script render?
        probe = render_view(K, scene.splits["train"].cameras.c2w[0], H, W)
    if "normal" in probe:
        modes += ("normal",)
    viewer = Viewer(render_view, scene, port=cfg.viewer_port, title=title, modes=modes)
    print(f"viewer: http://localhost:{viewer.port} (on a remote machine: ssh -L {viewer.port}:localhost:"
          f"{viewer.port} <host>, then open that address here)", flush=True)
    return viewer


def main(argv=None) -> None:
    """python -m common.viewer RUN_FOLDER [--port N]: view a finished run, as `<script>.py --render_only
    --viewer --outdir RUN_FOLDER` would (the script is the one that wrote the folder's checkpoints)."""
    import argparse

    from common.checkpoints import load_latest_valid_checkpoint
    from common.cli import run_main

    parser = argparse.ArgumentParser(prog="python -m common.viewer", description=main.__doc__)
    parser.add_argument("run_folder", help="a run folder with checkpoints (ckpt_*.pt), e.g. runs/01_nerf/builtin")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port of the page (default {DEFAULT_PORT})")
    args = parser.parse_args(argv)

    def view() -> None:
        folder = Path(args.run_folder)
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder: pass a run folder (e.g. runs/01_nerf/builtin)")
        check_port_free(args.port)
        found = load_latest_valid_checkpoint(folder)
        if found is None:
            raise UserError(f"no checkpoint (ckpt_*.pt) in {folder}: train first, or pass the --outdir of a run")
        script = found[1].get("script")
        root = Path(__file__).resolve().parents[1]
        if not script or not (root / f"{script}.py").exists():
            raise UserError(f"{found[0]} does not name a script of this repository ({script!r})")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        module = importlib.import_module(script)
        module.main(["--render_only", "--viewer", "--viewer_port", str(args.port), "--outdir", str(folder)])

    run_main(view)


if __name__ == "__main__":
    main()
