"""Scenes posed by COLMAP (Schoenberger and Frahm, CVPR 2016): a sparse model, binary or text, beside the photos.

    <scene>/images/...             the photographs COLMAP ran on (any sub-folders: names are relative paths)
    <scene>/sparse/0/              the model (or <scene>/sparse/, or <scene> itself holding the files):
        cameras.bin | cameras.txt    per camera: id, model, width, height, the model's parameters
        images.bin  | images.txt     per registered image: id, world-to-camera rotation (quaternion w x y z) and
                                     translation, camera id, file name, its 2D keypoints
        points3D.bin | points3D.txt  the sparse points: position, colour, error, track
The binary files are little-endian, as COLMAP's `src/colmap/scene/reconstruction_io.cc` writes them; both
layouts are read here with numpy and struct (`read_model`), and written by `write_model` (the tests and
`common.capture` use it). COLMAP 3.12+ also writes rigs and frames files: they are not needed and not read.

Conventions: COLMAP poses map world to camera in OpenCV's frame (x right, y down, looks along +z), with the
centre of the top-left pixel at (0.5, 0.5), as in common/rays.py. The camera-to-world matrix is
[R^T | -R^T t], and its y and z columns are negated for OpenGL's frame (x right, y up, looks along -z).

Camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL (k), RADIAL (k1, k2), OPENCV (k1, k2, p1, p2) and
FULL_OPENCV with k3..k6 = 0 map exactly onto common/rays.py's lens model (OpenCV's k1, k2, p1, p2; distortion is
undone on the rays' pixel coordinates, the images are never resampled). Fisheye and other models are refused in
one line naming the camera: undistort the images with COLMAP's image_undistorter and pass its output.

Scene frame: COLMAP's world has an arbitrary origin, orientation and scale. `normalise_poses`
(common/data/scene.py) moves the cameras' focus to the origin, their mean up vector to +z, and scales them to a
mean distance CAMERA_RADIUS from it (the fox's cameras sit at 1.70 after Instant-NGP's scale of 0.33, the same
frame as common/data/ngp_transforms.py). aabb: the box holding 98% of the sparse points (1st to 99th
percentile per axis, widened by 10%), at least the unit cube; near = NEAR, far = the farthest box corner seen
from the farthest camera.

Split: the registered images sorted by name; every 8th (0, 8, 16, ...) is "test" (LLFF / mip-NeRF 360's
protocol), "val" is the same held-out set.
"""
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.data.scene import Cameras, Scene, Split, downscale_area, normalise_poses, read_image
from common.errors import UserError, warn

HOLDOUT_EVERY = 8
NEAR = 0.05
CAMERA_RADIUS = 1.7  # mean distance of the cameras from their focus after normalisation (scene units)

# COLMAP's camera models: id -> (name, number of parameters) (src/colmap/sensor/models.h).
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5), 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4),
    16: ("EUCM", 6), 17: ("EQUIRECTANGULAR", 2),
}
MODEL_IDS = {name: (model_id, n) for model_id, (name, n) in CAMERA_MODELS.items()}


@dataclass
class ColmapCamera:
    model: str  # e.g. "OPENCV"
    width: int
    height: int
    params: np.ndarray  # (n,) float64, in the model's order (COLMAP's params_info)


@dataclass
class ColmapImage:
    qvec: np.ndarray  # (4,) w, x, y, z: world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (K, 2) keypoints in pixels
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (K,), -1 = none


@dataclass
class ColmapModel:
    cameras: dict  # id -> ColmapCamera
    images: dict  # id -> ColmapImage
    points: dict  # id -> (xyz (3,), rgb (3,) uint8, error float, track (T, 2) int: image id, keypoint index)

    def points_xyz(self) -> np.ndarray:
        """(P, 3) float64 positions of the sparse points."""
        return np.array([p[0] for p in self.points.values()], dtype=np.float64).reshape(-1, 3)


def qvec_to_rotation(q: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a unit quaternion (w, x, y, z) (Hamilton convention, as COLMAP and Eigen)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def rotation_to_qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w >= 0, of a rotation matrix (the eigenvector of the largest eigenvalue of
    Bar-Itzhack's symmetric 4x4 matrix, stable for every rotation)."""
    (xx, yx, zx), (xy, yy, zy), (xz, yz, zz) = np.asarray(R, dtype=np.float64)  # rows; xy = R[1, 0]
    K = np.array([[xx - yy - zz, 0, 0, 0], [yx + xy, yy - xx - zz, 0, 0], [zx + xz, zy + yz, zz - xx - yy, 0],
                  [yz - zy, zx - xz, xy - yx, xx + yy + zz]]) / 3.0
    values, vectors = np.linalg.eigh(K)
    q = vectors[[3, 0, 1, 2], np.argmax(values)]
    return q if q[0] >= 0 else -q


def c2w_from_colmap(image: ColmapImage) -> np.ndarray:
    """(4, 4) OpenGL camera-to-world of a COLMAP image (module docstring)."""
    R = qvec_to_rotation(image.qvec)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R.T, -R.T @ np.asarray(image.tvec, dtype=np.float64)
    c2w[:3, 1:3] *= -1  # OpenCV (y down, +z forward) -> OpenGL (y up, -z forward)
    return c2w


def colmap_from_c2w(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(qvec, tvec) of the world-to-camera pose of an OpenGL camera-to-world (4, 4); inverse of c2w_from_colmap."""
    cv = np.array(c2w, dtype=np.float64)
    cv[:3, 1:3] *= -1
    R = cv[:3, :3].T
    return rotation_to_qvec(R), -R @ cv[:3, 3]


# --- binary files --------------------------------------------------------------------------------------------

class _Damaged(Exception):
    pass


class _Reader:
    """Reads little-endian values from bytes, raising _Damaged when the file ends too early."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise _Damaged(f"it ends at byte {len(self.data)}, inside a record")
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return values

    def array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        if count < 0 or self.at + dtype.itemsize * count > len(self.data):
            raise _Damaged(f"it ends at byte {len(self.data)}, inside a record of {count} entries")
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at)
        self.at += dtype.itemsize * count
        return values

    def name(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise _Damaged("an image name has no end")
        text = self.data[self.at:end].decode("utf-8", errors="strict")
        self.at = end + 1
        return text

    def finish(self):
        if self.at != len(self.data):
            raise _Damaged(f"{len(self.data) - self.at} bytes are left after the last record")


def _read_cameras_bin(reader: _Reader) -> dict:
    cameras = {}
    for _ in range(reader.take("Q")[0]):
        camera_id, model_id, width, height = reader.take("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise _Damaged(f"camera {camera_id} has the unknown model id {model_id}")
        name, n = CAMERA_MODELS[model_id]
        cameras[camera_id] = ColmapCamera(name, width, height, np.array(reader.take("d" * n)))
    return cameras


KEYPOINT = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def _read_images_bin(reader: _Reader) -> dict:
    images = {}
    for _ in range(reader.take("Q")[0]):
        values = reader.take("i7di")
        name = reader.name()
        keypoints = reader.array(KEYPOINT, reader.take("Q")[0])
        images[values[0]] = ColmapImage(np.array(values[1:5]), np.array(values[5:8]), values[8], name,
                                        np.stack([keypoints["x"], keypoints["y"]], -1), keypoints["id"].copy())
    return images


def _read_points_bin(reader: _Reader) -> dict:
    points = {}
    for _ in range(reader.take("Q")[0]):
        point_id, x, y, z, r, g, b, error = reader.take("Q3d3Bd")
        track = reader.array("<i4", 2 * reader.take("Q")[0]).reshape(-1, 2)
        points[point_id] = (np.array([x, y, z]), np.array([r, g, b], dtype=np.uint8), error, track.copy())
    return points


# --- text files ----------------------------------------------------------------------------------------------

def _lines(path: Path):
    """(line number, fields) of the lines that are not comments or blank."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield number, line.split()


def _read_cameras_txt(path: Path) -> dict:
    cameras = {}
    for number, fields in _lines(path):
        try:
            model = fields[1]
            if model not in MODEL_IDS or len(fields) != 4 + MODEL_IDS[model][1]:
                raise ValueError(f"model {model} with {len(fields) - 4} parameters")
            cameras[int(fields[0])] = ColmapCamera(model, int(fields[2]), int(fields[3]),
                                                   np.array([float(v) for v in fields[4:]]))
        except (ValueError, IndexError) as err:
            raise _Damaged(f"line {number} is not 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' ({err})") from err
    return cameras


def _read_images_txt(path: Path) -> dict:
    images = {}
    # Two lines per image; the second (keypoints) may be empty, so blank lines count here.
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if not line.lstrip().startswith("#")]
    while lines and not lines[-1][1].strip():
        lines.pop()
    if len(lines) % 2:
        lines.append((lines[-1][0] + 1, ""))
    for (number, header), (_, keypoints) in zip(lines[0::2], lines[1::2]):
        try:
            fields = header.split()
            if len(fields) < 10:
                raise ValueError(f"{len(fields)} fields")
            values = [float(v) for v in fields[1:8]]
            flat = np.array([float(v) for v in keypoints.split()]).reshape(-1, 3)
            images[int(fields[0])] = ColmapImage(np.array(values[:4]), np.array(values[4:]), int(fields[8]),
                                                 " ".join(fields[9:]), flat[:, :2], flat[:, 2].astype(np.int64))
        except ValueError as err:
            raise _Damaged(f"line {number} is not 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME' followed by a "
                           f"line of keypoints 'X Y POINT3D_ID ...' ({err})") from err
    return images


def _read_points_txt(path: Path) -> dict:
    points = {}
    for number, fields in _lines(path):
        try:
            if len(fields) < 8 or (len(fields) - 8) % 2:
                raise ValueError(f"{len(fields)} fields")
            track = np.array([int(v) for v in fields[8:]], dtype=np.int32).reshape(-1, 2)
            points[int(fields[0])] = (np.array([float(v) for v in fields[1:4]]),
                                      np.array([int(v) for v in fields[4:7]], dtype=np.uint8), float(fields[7]),
                                      track)
        except ValueError as err:
            raise _Damaged(f"line {number} is not 'POINT3D_ID X Y Z R G B ERROR TRACK...' ({err})") from err
    return points


PARTS = (("cameras", _read_cameras_bin, _read_cameras_txt), ("images", _read_images_bin, _read_images_txt),
         ("points3D", _read_points_bin, _read_points_txt))


def find_model(folder) -> Path | None:
    """The folder holding a COLMAP model among <folder>/sparse/0, <folder>/sparse and <folder>, or None."""
    folder = Path(folder)
    for candidate in (folder / "sparse" / "0", folder / "sparse", folder):
        if any((candidate / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return candidate
    return None


def read_model(folder) -> ColmapModel:
    """Read the COLMAP model in `folder` (cameras, images, points3D; each .bin if present, else .txt). A missing
    or damaged file is a one-line UserError naming it."""
    folder = Path(folder)
    parts = {}
    for stem, read_bin, read_txt in PARTS:
        binary, text = folder / f"{stem}.bin", folder / f"{stem}.txt"
        path = binary if binary.is_file() else text
        if not path.is_file():
            raise UserError(f"{binary} (or {text.name}) not found: a COLMAP model needs cameras, images and "
                            f"points3D; export the whole model (COLMAP: File > Export model)")
        try:
            if path.suffix == ".bin":
                reader = _Reader(path.read_bytes())
                parts[stem] = read_bin(reader)
                reader.finish()
            else:
                parts[stem] = read_txt(path)
        except (_Damaged, UnicodeDecodeError) as err:
            raise UserError(f"{path} is damaged ({err}): re-export the model from COLMAP") from err
    model = ColmapModel(parts["cameras"], parts["images"], parts["points3D"])
    for image_id, image in model.images.items():
        if image.camera_id not in model.cameras:
            raise UserError(f"{folder / 'images'}: image {image_id} ({image.name}) uses camera {image.camera_id}, "
                            f"which the cameras file does not hold; re-export the model from COLMAP")
    return model


def write_model(model: ColmapModel, folder, binary: bool = True) -> None:
    """Write `model` into `folder` as COLMAP's binary (.bin) or text (.txt) files (the layout `read_model` reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        out = [struct.pack("<Q", len(model.cameras))]
        for camera_id, cam in model.cameras.items():
            model_id, n = MODEL_IDS[cam.model]
            out.append(struct.pack("<iiQQ" + "d" * n, camera_id, model_id, cam.width, cam.height, *cam.params))
        (folder / "cameras.bin").write_bytes(b"".join(out))
        out = [struct.pack("<Q", len(model.images))]
        for image_id, im in model.images.items():
            out.append(struct.pack("<i7di", image_id, *im.qvec, *im.tvec, im.camera_id))
            out.append(im.name.encode("utf-8") + b"\0" + struct.pack("<Q", len(im.xys)))
            keypoints = np.zeros(len(im.xys), dtype=KEYPOINT)
            keypoints["x"], keypoints["y"], keypoints["id"] = im.xys[:, 0], im.xys[:, 1], im.point3d_ids
            out.append(keypoints.tobytes())
        (folder / "images.bin").write_bytes(b"".join(out))
        out = [struct.pack("<Q", len(model.points))]
        for point_id, (xyz, rgb, error, track) in model.points.items():
            out.append(struct.pack("<Q3d3BdQ", point_id, *xyz, *(int(c) for c in rgb), error, len(track)))
            out.append(np.asarray(track, dtype="<i4").tobytes())
        (folder / "points3D.bin").write_bytes(b"".join(out))
        return
    lines = ["# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]"]
    lines += [f"{i} {c.model} {c.width} {c.height} " + " ".join(repr(float(p)) for p in c.params)
              for i, c in model.cameras.items()]
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME", "# POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, im in model.images.items():
        lines.append(f"{i} " + " ".join(repr(float(v)) for v in (*im.qvec, *im.tvec)) + f" {im.camera_id} {im.name}")
        lines.append(" ".join(f"{float(x)!r} {float(y)!r} {int(p)}" for (x, y), p in zip(im.xys, im.point3d_ids)))
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    for i, (xyz, rgb, error, track) in model.points.items():
        lines.append(f"{i} " + " ".join(repr(float(v)) for v in xyz) + " " + " ".join(str(int(c)) for c in rgb)
                     + f" {float(error)!r} " + " ".join(str(int(v)) for v in np.asarray(track).reshape(-1)))
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n")


# --- the Scene -----------------------------------------------------------------------------------------------

def intrinsics(camera: ColmapCamera, where: str) -> tuple[np.ndarray, np.ndarray]:
    """K (3, 3) and OpenCV distortion (k1, k2, p1, p2) of a COLMAP camera; a one-line UserError for a model
    common/rays.py cannot represent (`where` names the file and the camera)."""
    p = camera.params
    model = camera.model
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        k = list(p[3:]) + [0.0] * (2 - len(p[3:]))
        distortion = [k[0], k[1], 0.0, 0.0]
    elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):
        fx, fy, cx, cy = p[:4]
        distortion = list(p[4:8]) + [0.0] * (4 - len(p[4:8]))
        if model == "FULL_OPENCV" and np.any(p[8:] != 0):
            raise UserError(f"{where} is FULL_OPENCV with k3..k6 = {list(p[8:])}: only k1, k2, p1, p2 are "
                            f"supported; re-run COLMAP with --ImageReader.camera_model OPENCV or undistort the "
                            f"images (colmap image_undistorter)")
    else:
        raise UserError(f"{where} uses the {model} camera model: only SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, "
                        f"RADIAL and OPENCV are supported; undistort the images (colmap image_undistorter) and "
                        f"pass its output")
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, np.array(distortion, dtype=np.float64)


def find_images(root: Path, model_dir: Path) -> Path:
    """The folder of the photographs: <root>/images, else the images/ two levels above sparse/0."""
    for candidate in (root / "images", model_dir.parent.parent / "images", model_dir.parent / "images"):
        if candidate.is_dir():
            return candidate
    raise UserError(f"{root} holds a COLMAP model ({model_dir}) but no images/ folder: put the photographs "
                    f"COLMAP ran on in {root / 'images'}")


def scene_box(points: np.ndarray) -> torch.Tensor:
    """(2, 3) box around the normalised sparse points (module docstring)."""
    if len(points) < 10:
        return torch.tensor([[-1.0] * 3, [1.0] * 3])
    lo, hi = np.percentile(points, 1, axis=0), np.percentile(points, 99, axis=0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * 1.1
    lo, hi = np.minimum(centre - half, -1.0), np.maximum(centre + half, 1.0)
    return torch.tensor(np.stack([lo, hi]), dtype=torch.float32)


def load_colmap(root, downscale: int = 1, splits=("train", "val", "test"), max_images: dict | int | None = None,
                radius: float = CAMERA_RADIUS) -> Scene:
    """Read a COLMAP project (module docstring) into a Scene. downscale: area-average the images by this factor
    (K divided by it; distortion coefficients act on normalised coordinates and do not change)."""
    root = Path(root)
    model_dir = find_model(root)
    if model_dir is None:
        raise UserError(f"{root} holds no COLMAP model (cameras.bin or cameras.txt in sparse/0/, sparse/ or the "
                        f"folder itself): pass --scene with a COLMAP project folder")
    if downscale < 1:
        raise UserError(f"--downscale must be a positive integer, got {downscale}")
    model = read_model(model_dir)
    image_dir = find_images(root, model_dir)
    ext = ".bin" if (model_dir / "images.bin").is_file() else ".txt"
    camera_file, image_file = model_dir / f"cameras{ext}", model_dir / f"images{ext}"
    registered = sorted(model.images.values(), key=lambda im: im.name)
    if not registered:
        raise UserError(f"{image_file} holds no registered image: COLMAP posed none; re-run it (more overlap, "
                        f"less blur)")
    present = [im for im in registered if (image_dir / im.name).is_file()]
    if not present:
        raise UserError(f"{image_file} lists {len(registered)} images but none is in {image_dir} (first: "
                        f"{registered[0].name}): put the photographs COLMAP ran on there")
    if len(present) < len(registered):
        warn(f"{image_file}: skipping {len(registered) - len(present)} of {len(registered)} registered images "
             f"whose file is absent from {image_dir}")
    sizes = {(model.cameras[im.camera_id].width, model.cameras[im.camera_id].height) for im in present}
    if len(sizes) > 1:
        raise UserError(f"{camera_file}: the cameras have mixed sizes {sorted(sizes)}: one image size is "
                        f"supported; resize the photographs to one size and re-run COLMAP")
    c2w = torch.tensor(np.stack([c2w_from_colmap(im) for im in present]))
    normalised, similarity = normalise_poses(c2w, radius, torch.from_numpy(model.points_xyz()))
    xyz = model.points_xyz()
    points = xyz @ similarity[:3, :3].numpy().T + similarity[:3, 3].numpy()
    held_out = list(range(0, len(present), HOLDOUT_EVERY))
    members = {"train": [i for i in range(len(present)) if i % HOLDOUT_EVERY], "val": held_out, "test": held_out}
    if not members["train"]:
        raise UserError(f"{image_file} holds {len(present)} registered image(s): at least 2 are needed (one is "
                        f"held out for testing); capture more overlapping photographs")
    loaded = {}
    for split in splits:
        limit = max_images.get(split) if isinstance(max_images, dict) else max_images
        chosen = members[split][:limit] if limit is not None else members[split]
        images, Ks, distortions = [], [], []
        for i in chosen:
            im = present[i]
            camera = model.cameras[im.camera_id]
            path = image_dir / im.name
            image = read_image(path)[..., :3]
            if image.shape[:2] != (camera.height, camera.width):
                raise UserError(f"{path} is {image.shape[1]}x{image.shape[0]} but {camera_file} says "
                                f"{camera.width}x{camera.height} (camera {im.camera_id}): pass the photographs "
                                f"COLMAP ran on, at their size")
            if min(image.shape[:2]) < downscale:
                raise UserError(f"--downscale {downscale} is larger than the {image.shape[1]}x{image.shape[0]} "
                                f"image {path}")
            images.append(downscale_area(image, downscale))
            K, distortion = intrinsics(camera, f"{camera_file}: camera {im.camera_id} ({im.name})")
            K[:2] /= downscale
            Ks.append(K)
            distortions.append(distortion)
        distortion = torch.tensor(np.stack(distortions), dtype=torch.float32)
        H, W = images[0].shape[:2]
        cameras = Cameras(normalised[chosen], torch.tensor(np.stack(Ks), dtype=torch.float32), H, W,
                          distortion if bool(distortion.abs().sum() > 0) else None)
        loaded[split] = Split(split, torch.from_numpy(np.stack(images)), cameras,
                              [(image_dir / present[i].name).relative_to(root).as_posix()
                               if (image_dir / present[i].name).is_relative_to(root) else present[i].name
                               for i in chosen])
    aabb = scene_box(points)
    corners = torch.cartesian_prod(*aabb.T)  # (8, 3)
    far = float(torch.cdist(normalised[:, :3, 3], corners).max())
    scene = Scene(name=root.name, root=root, splits=loaded, near=NEAR, far=max(far, 2 * NEAR), aabb=aabb,
                  white_background=False, camera_files={split: image_file for split in loaded})
    scene.points = torch.tensor(points, dtype=torch.float32)  # (P, 3) the sparse cloud in the scene's frame
    return scene
