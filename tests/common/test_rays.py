import math

import pytest
import torch

from common.data.scene import Cameras, Split
from common.paths import look_at
from common.rays import get_rays, rays_through_pixels, render_image, sample_ray_batch


def _camera(H=31, W=41, focal=35.0, eye=(1.0, -3.0, 2.0)):
    K = torch.tensor([[focal, 0.0, W / 2], [0.0, focal * 1.1, H / 2], [0.0, 0.0, 1.0]])  # fx != fy on purpose
    c2w = look_at(torch.tensor(eye), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    return K, c2w, H, W


def _distance_to_line(point, rays_o, rays_d):
    return torch.linalg.cross(point - rays_o, rays_d, dim=-1).norm(dim=-1) / rays_d.norm(dim=-1)


def test_central_pixel_ray_of_a_camera_looking_at_the_origin_passes_through_it():
    K, c2w, H, W = _camera()  # odd H and W: the central pixel's centre is the principal point
    rays_o, rays_d = get_rays(K, c2w, H, W)
    assert rays_o.shape == rays_d.shape == (H * W, 3)
    centre = (H // 2) * W + W // 2
    assert _distance_to_line(torch.zeros(3), rays_o[centre], rays_d[centre]) < 1e-6
    assert (rays_d[centre] @ (torch.zeros(3) - rays_o[centre])) > 0  # in front of the camera


def test_ray_directions_agree_with_projecting_points_through_K_and_c2w():
    K, c2w, H, W = _camera()
    points = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) - 0.5  # near the origin, in view
    # Project: world -> camera (inverse of c2w), then the pinhole with y up / rows down and -z forward.
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # (n, 3) = R^T (X - t)
    depth = -cam[:, 2]
    assert (depth > 0).all()
    u = K[0, 2] + K[0, 0] * cam[:, 0] / depth
    v = K[1, 2] - K[1, 1] * cam[:, 1] / depth
    rays_o, rays_d = rays_through_pixels(K, c2w, u, v)
    assert _distance_to_line(points, rays_o, rays_d).max() < 1e-5
    # t is the depth along the optical axis: o + depth * d is the point itself.
    torch.testing.assert_close(rays_o + depth[:, None] * rays_d, points, atol=1e-5, rtol=0)


def test_get_rays_uses_pixel_centres_in_row_major_order_with_unit_camera_z():
    K, c2w, H, W = _camera()
    rays_o, rays_d = get_rays(K, c2w, H, W)
    rows, cols = torch.tensor([0, 5, H - 1]), torch.tensor([0, 17, W - 1])
    expected_o, expected_d = rays_through_pixels(K, c2w, cols + 0.5, rows + 0.5)
    torch.testing.assert_close(rays_d[rows * W + cols], expected_d)
    torch.testing.assert_close(rays_o[rows * W + cols], expected_o)
    dirs_cam = rays_d @ c2w[:3, :3]  # back to the camera frame
    torch.testing.assert_close(dirs_cam[:, 2], -torch.ones(H * W))
    # Row 0 is the top of the image: its rays point up (camera +y); column 0 is the left (camera -x).
    assert dirs_cam[0, 1] > 0 and dirs_cam[0, 0] < 0


def _encoded_split(n_images=3, H=12, W=10):
    """A split whose pixel values encode (image, row, col), to check which pixel each ray came from."""
    image_idx, rows, cols = torch.meshgrid(torch.arange(n_images), torch.arange(H), torch.arange(W), indexing="ij")
    images = torch.stack([image_idx, rows, cols, torch.ones_like(rows)], dim=-1).float()  # (N, H, W, 4)
    eyes = torch.tensor([[4.0, 0, 1], [0, 4.0, 1], [-4.0, 0, 1]])[:n_images]
    c2w = look_at(eyes, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    K = torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]).expand(n_images, 3, 3)
    return Split("train", images, Cameras(c2w, K, H, W), [])


def test_sample_ray_batch_returns_the_ray_and_colour_of_the_same_pixel():
    split = _encoded_split()
    rays_o, rays_d, target = sample_ray_batch(split, 500, torch.Generator().manual_seed(0))
    assert rays_o.shape == rays_d.shape == (500, 3) and target.shape == (500, 4)
    n, row, col = target[:, 0].long(), target[:, 1].long(), target[:, 2].long()
    assert len(set(n.tolist())) == 3  # rays come from every image
    for i in range(500):
        all_o, all_d = get_rays(split.cameras.K[n[i]], split.cameras.c2w[n[i]], 12, 10)
        torch.testing.assert_close(rays_d[i], all_d[row[i] * 10 + col[i]])
        torch.testing.assert_close(rays_o[i], all_o[row[i] * 10 + col[i]])
        if i == 20:
            break
    again = sample_ray_batch(split, 500, torch.Generator().manual_seed(0))
    assert torch.equal(again[2], target)


def test_pixel_box_samples_only_inside_the_box():
    split = _encoded_split(H=40, W=20)
    _, _, target = sample_ray_batch(split, 2000, torch.Generator().manual_seed(1), pixel_box=(10, 30, 5, 15))
    rows, cols = target[:, 1], target[:, 2]
    assert rows.min() == 10 and rows.max() == 29  # rows [10, 30)
    assert cols.min() == 5 and cols.max() == 14
    with pytest.raises(ValueError):
        sample_ray_batch(split, 10, torch.Generator(), pixel_box=(10, 10, 0, 20))


def test_render_image_concatenates_chunks_without_gradients():
    weight = torch.tensor(2.0, requires_grad=True)
    calls = []

    def render_fn(rays_o, rays_d):
        calls.append(rays_o.shape[0])
        return {"rgb": torch.sigmoid(rays_d * weight), "depth": rays_o.norm(dim=-1)}

    K, c2w, H, W = _camera(H=9, W=11)
    rays_o, rays_d = get_rays(K, c2w, H, W)
    out = render_image(render_fn, rays_o, rays_d, chunk=40)
    assert calls == [40, 40, 19]
    assert out["rgb"].shape == (99, 3) and out["depth"].shape == (99,)
    assert not out["rgb"].requires_grad
    torch.testing.assert_close(out["rgb"], torch.sigmoid(rays_d * 2.0))
    assert math.isclose(float(out["depth"][0]), float(rays_o[0].norm()), rel_tol=1e-6)
