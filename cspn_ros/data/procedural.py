"""Sensor-agnostic training batches, ray cast in torch (GPU or CPU): scene, camera, sensor.

Every batch is drawn afresh from a seeded generator, so training time goes into learning rather
than into loading bags. What a real fleet varies is randomised per sample:
- scene: outdoor (ground plane, buildings, cars, poles, trees made of a trunk and a crown of
  spheres, clutter, sky; 0.3-250 m) or indoor (a room with furniture, thin legs and shelves;
  scaled 0.5-2x so table tops and halls both occur);
- camera: horizontal field of view 40-110 deg, aspect from the crop, principal point jitter,
  pitch and roll, height above ground;
- appearance: real photographs as textures (scikit-image's and matplotlib's shipped sample
  photos, plus procedural noise), tint, Lambert + specular shading, exposure, gamma, blur,
  sensor noise, 8-bit quantisation, JPEG artefacts (half the images; added after the shipped
  model was trained);
- sensor (`PATTERNS`): spinning LiDARs of 8-128 beams with uneven elevation tables, Livox-like
  rosette scans, solid-state raster scans, random points (100 to 30% of the pixels), pixel rows,
  and ToF-like dense depth with holes. Sensor rays are cast from the sensor's own origin (up to
  0.5 m from the camera, small rotation), so the parallax outliers of a real rig (background
  points seen through foreground edges) appear as they do on a robot; range noise and dropouts
  on dark, specular and grazing surfaces; sky returns nothing.

Frames: all geometry is in the colour camera's optical frame (x right, y down, z forward);
"world" is that frame rotated by the camera's pitch and roll, with the ground at y = height.
Rays through pixels are (x, y, 1) before rotation, so a hit's ray parameter t is its depth z.
Output (`ProceduralBatches.batch`): rgb (B,3,H,W) float in [0, 1], sparse (B,1,H,W) metres
(0 = no measurement), target (B,1,H,W) metres (0 = sky, not supervised).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cspn_ros.config import parse_setting
from cspn_ros.data.procedural_scene import (TILE, Scene, SceneSampler, cast, log_uniform,
                                            rotation_matrix, texture_atlas)

#: Sensor patterns and their sampling weights.
PATTERNS = {'spinning': 0.35, 'rosette': 0.1, 'raster': 0.1, 'random': 0.2, 'rows': 0.05,
            'tof': 0.2}


def pattern_weights(weights: dict[str, float]) -> dict[str, float]:
    """Sensor pattern weights normalised to sum 1; ValueError for unknown patterns, negative
    weights or none positive."""
    unknown = sorted(set(weights) - set(PATTERNS))
    if unknown:
        raise ValueError(f'unknown sensor patterns {unknown}; known: {list(PATTERNS)}')
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f'pattern weights must be >= 0 with a positive sum, got {weights}')
    total = float(sum(weights.values()))
    return {name: float(w) / total for name, w in weights.items() if w > 0}


def parse_pattern_weights(text: str) -> dict[str, float]:
    """'rows=0.2,tof=0.1' -> PATTERNS with those weights replaced, normalised."""
    weights = dict(PATTERNS)
    for item in filter(None, (part.strip() for part in text.split(','))):
        name, value = parse_setting(item)
        weights[name] = float(value)
    return pattern_weights(weights)  # unknown names are refused there


class ProceduralBatches(torch.utils.data.IterableDataset):
    """An endless-per-epoch source of training batches (see the module docstring).

    `steps` batches of `batch_size` samples of height x width per epoch; batch k of epoch e is a
    pure function of (seed, e, k). Iterating yields dicts rgb / sparse / target on `device`.
    Use with a DataLoader of batch_size=None and num_workers=0 (the work runs on the device).
    patterns: sensor pattern -> sampling weight (default PATTERNS; weights need not sum to 1).
    """

    def __init__(self, steps: int, batch_size: int, height: int, width: int,
                 device: str | torch.device = 'cpu', seed: int = 0,
                 patterns: Optional[dict[str, float]] = None) -> None:
        super().__init__()
        self.patterns = pattern_weights(PATTERNS if patterns is None else patterns)
        self.steps, self.batch_size = steps, batch_size
        self.height, self.width = height, width
        self.device, self.seed, self.epoch = torch.device(device), seed, 0
        self._atlas: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for step in range(self.steps):
            yield self.batch(self.epoch, step)

    def atlas(self) -> torch.Tensor:
        """(1, 3, rows*TILE, cols*TILE) texture atlas on the device, made once."""
        if self._atlas is None:
            tiles = texture_atlas(np.random.default_rng(self.seed))
            cols = math.ceil(math.sqrt(len(tiles)))
            rows = math.ceil(len(tiles) / cols)
            grid = np.zeros((rows * TILE, cols * TILE, 3), np.float32)
            for i, tile in enumerate(tiles):
                r, c = divmod(i, cols)
                grid[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = tile
            self._atlas = torch.from_numpy(grid).permute(2, 0, 1)[None].to(self.device)
            self._atlas_shape = (rows, cols, len(tiles))
        return self._atlas

    @torch.no_grad()
    def batch(self, epoch: int, step: int) -> dict[str, torch.Tensor]:
        """One batch, a pure function of (seed, epoch, step)."""
        rng = np.random.default_rng([self.seed, epoch, step])
        atlas = self.atlas()
        rows, cols, count = self._atlas_shape
        B, H, W, dev = self.batch_size, self.height, self.width, self.device
        fov = rng.uniform(40, 110, B)
        sampler = SceneSampler(rng, count)
        scenes, _ = sampler.sample(B, fov)
        scene = sampler.pack(scenes, dev)

        fx = W / 2 / np.tan(np.radians(fov) / 2)
        fy = fx * rng.uniform(0.95, 1.05, B)
        cx = W / 2 + rng.normal(0, 0.03, B) * W
        cy = H / 2 + rng.normal(0, 0.03, B) * H
        K = torch.as_tensor(np.stack([fx, fy, cx, cy], 1), dtype=torch.float32, device=dev)
        pitch = torch.as_tensor(np.radians(rng.normal(0, 6, B)), dtype=torch.float32, device=dev)
        roll = torch.as_tensor(np.radians(rng.normal(0, 3, B)), dtype=torch.float32, device=dev)
        world_from_cam = rotation_matrix(pitch, roll)                      # (B,3,3)

        v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                              torch.arange(W, device=dev, dtype=torch.float32), indexing='ij')
        rays_cam = torch.stack([(u.flatten()[None] - K[:, 2:3]) / K[:, 0:1],
                                (v.flatten()[None] - K[:, 3:4]) / K[:, 1:2],
                                torch.ones(B, H * W, device=dev)], -1)   # (B,R,3), z = 1
        rays_world = rays_cam @ world_from_cam.transpose(1, 2)
        zero = torch.zeros(B, 3, device=dev)
        t, index, normal = cast(scene, zero, rays_world)
        depth = torch.where(torch.isfinite(t) & (t < 400), t, torch.zeros_like(t))
        point = rays_world * depth[..., None]
        albedo, specular = self._albedo(scene, atlas, index, point, normal)
        rgb = self._shade(rng, rays_world, depth, albedo, specular, normal).view(B, H, W, 3)
        rgb = self._camera_effects(rng, rgb.permute(0, 3, 1, 2))
        target = depth.view(B, 1, H, W)

        sparse = torch.zeros(B, 1, H, W, device=dev)
        margins = [s['margin'] for s in scenes]
        for b in range(B):
            sparse[b, 0] = self._sensor(rng, scene, b, K[b], world_from_cam[b], target[b, 0],
                                        atlas, margins)
        return {'rgb': rgb.contiguous(), 'sparse': sparse, 'target': target}

    def _albedo(self, scene: Scene, atlas: torch.Tensor, index: torch.Tensor,
                point: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Triplanar texture lookup -> albedo (B,R,3) in [0,1], specular flag (B,R)."""
        rows, cols, _ = self._atlas_shape
        material = scene.material.gather(1, index[..., None].expand(-1, -1, 6))
        tex, tint, scale, specular = (material[..., 0], material[..., 1:4], material[..., 4],
                                      material[..., 5])
        axis = normal.abs().argmax(-1)
        uv = torch.where((axis == 0)[..., None], point[..., [2, 1]],
                         torch.where((axis == 1)[..., None], point[..., [0, 2]],
                                     point[..., [0, 1]]))
        uv = torch.frac(uv / scale[..., None] + 1000.0)              # [0, 1) within the tile
        tile_r, tile_c = torch.div(tex, cols, rounding_mode='floor'), torch.remainder(tex, cols)
        gx = (tile_c + 0.02 + 0.96 * uv[..., 0]) / cols * 2 - 1
        gy = (tile_r + 0.02 + 0.96 * uv[..., 1]) / rows * 2 - 1
        grid = torch.stack([gx, gy], -1)[:, None]                    # (B,1,R,2)
        colour = F.grid_sample(atlas.expand(index.shape[0], -1, -1, -1), grid,
                               mode='bilinear', align_corners=False)[:, :, 0].transpose(1, 2)
        return colour * tint, specular

    @staticmethod
    def _shade(rng: np.random.Generator, rays: torch.Tensor, depth: torch.Tensor,
               albedo: torch.Tensor, specular: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        """Lambert + Phong shading, sky gradient where depth is 0 -> (B,R,3) linear colour."""
        B, dev = rays.shape[0], rays.device
        light = F.normalize(torch.as_tensor(rng.normal(0, 1, (B, 3)) + [0, -1.5, 0],
                                            dtype=torch.float32, device=dev), dim=-1)[:, None]
        ambient = torch.as_tensor(rng.uniform(0.15, 0.6, (B, 1, 1)), dtype=torch.float32,
                                  device=dev)
        lambert = (normal * light).sum(-1, keepdim=True).clamp_min(0)
        view = F.normalize(rays, dim=-1)
        reflect = view - 2 * (view * normal).sum(-1, keepdim=True) * normal
        phong = (reflect * light).sum(-1, keepdim=True).clamp_min(0) ** 20
        colour = albedo * (ambient + (1 - ambient) * lambert) + specular[..., None] * phong
        top = torch.as_tensor(rng.uniform([0.3, 0.4, 0.6], [0.8, 0.9, 1.0], (B, 3)),
                              dtype=torch.float32, device=dev)[:, None]
        bottom = torch.as_tensor(rng.uniform(0.6, 1.0, (B, 3)), dtype=torch.float32,
                                 device=dev)[:, None]
        height = (view[..., 1:2] + 1) / 2
        sky = top * (1 - height) + bottom * height
        return torch.where((depth > 0)[..., None], colour, sky)

    @staticmethod
    def _camera_effects(rng: np.random.Generator, rgb: torch.Tensor) -> torch.Tensor:
        """Exposure, gamma, blur, noise, 8-bit quantisation, JPEG: (B,3,H,W) -> (B,3,H,W) in
        [0,1]."""
        B, dev = rgb.shape[0], rgb.device

        def as_t(values) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float32, device=dev).view(B, 1, 1, 1)

        rgb = (rgb * as_t(log_uniform(rng, 0.5, 2.0, B))).clamp(0, 1) ** as_t(
            rng.uniform(0.7, 1.3, B))
        sigma = float(rng.uniform(0.3, 1.5)) if rng.random() < 0.4 else 0.0
        if sigma > 0:
            radius = int(math.ceil(2 * sigma))
            x = torch.arange(-radius, radius + 1, device=dev, dtype=torch.float32)
            kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
            kernel = kernel / kernel.sum()
            rgb = F.conv2d(F.pad(rgb, (radius, radius, 0, 0), mode='replicate'),
                           kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
            rgb = F.conv2d(F.pad(rgb, (0, 0, radius, radius), mode='replicate'),
                           kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        noise = as_t(rng.uniform(0, 0.03, B))
        generator = torch.Generator(device=dev).manual_seed(int(rng.integers(2**31)))
        rgb = rgb + noise * torch.randn(rgb.shape, device=dev, generator=generator) * (
            rgb + 0.05).sqrt()
        rgb = torch.round(rgb.clamp(0, 1) * 255) / 255
        return _jpeg(rng, rgb)


    def _sensor(self, rng: np.random.Generator, scene: Scene, b: int, K: torch.Tensor,
                world_from_cam: torch.Tensor, target: torch.Tensor, atlas: torch.Tensor,
                margins: list[float]) -> torch.Tensor:
        """Sparse depth (H,W) metres in the colour camera of sample b for a random sensor."""
        H, W, dev = self.height, self.width, self.device
        names = list(self.patterns)
        pattern = names[rng.choice(len(names), p=np.array(list(self.patterns.values())))]
        fx, fy, cx, cy = (float(x) for x in K)
        if pattern in ('random', 'rows', 'tof'):
            return self._depth_camera(rng, pattern, target)
        directions = self._lidar_directions(rng, pattern, fx, fy, cx, cy)
        if directions.shape[0] == 0:
            return torch.zeros(H, W, device=dev)
        offset = rng.normal(0, 1, 3)
        offset = offset / np.linalg.norm(offset) * rng.uniform(0, 0.9) * margins[b]
        tilt = torch.as_tensor(np.radians(rng.normal(0, 1.5, 3)), dtype=torch.float32, device=dev)
        rotation = rotation_matrix(tilt[0:1], tilt[1:2], tilt[2:3])[0]
        dirs_cam = directions @ rotation.T                              # sensor -> camera axes
        origin_cam = torch.as_tensor(offset, dtype=torch.float32, device=dev)
        origin_world = world_from_cam @ origin_cam
        dirs_world = dirs_cam @ world_from_cam.T
        single = lambda x: x[b:b + 1]  # noqa: E731
        sub = Scene(*(single(getattr(scene, f.name)) for f in dataclasses.fields(Scene)))
        t, index, normal = cast(sub, origin_world[None], dirs_world[None])
        t, index, normal = t[0], index[0], normal[0]
        hit = torch.isfinite(t) & (t < float(log_uniform(rng, 60, 300)))
        rng_t = torch.Generator(device=dev).manual_seed(int(rng.integers(2**31)))
        ray_length = dirs_world.norm(dim=-1)
        cosine = (-(normal * dirs_world).sum(-1) / ray_length).clamp(0, 1)
        point_world = origin_world + t.clamp(max=1e6)[:, None] * dirs_world
        albedo, specular = self._albedo(sub, atlas, index[None], point_world[None],
                                        normal[None])
        brightness = albedo[0].mean(-1)
        drop = (torch.rand(t.shape, device=dev, generator=rng_t)
                < rng.uniform(0, 0.8) * (1 - brightness / 0.3).clamp(0, 1))   # dark
        drop |= (torch.rand(t.shape, device=dev, generator=rng_t)
                 < rng.uniform(0, 0.9) * (1 - cosine / 0.25).clamp(0, 1))    # grazing
        drop |= (specular[0] > 0) & (torch.rand(t.shape, device=dev, generator=rng_t)
                                      < rng.uniform(0.3, 1.0))
        keep = hit & ~drop
        distance = t * ray_length
        sigma = rng.uniform(0, 0.03) + rng.uniform(0, 0.005) * distance
        distance = distance + sigma * torch.randn(t.shape, device=dev, generator=rng_t)
        points = origin_cam + dirs_cam / ray_length[:, None] * distance[:, None]
        return _splat(points[keep], fx, fy, cx, cy, H, W)

    def _lidar_directions(self, rng: np.random.Generator, pattern: str, fx: float, fy: float,
                          cx: float, cy: float) -> torch.Tensor:
        """(N,3) ray directions (sensor axes = camera axes) of a scan covering the image."""
        H, W = self.height, self.width
        half_h = math.atan(max(cx, W - cx) / fx)
        half_v = math.atan(max(cy, H - cy) / fy)
        if pattern == 'spinning':
            beams = int(rng.choice([8, 16, 32, 40, 64, 80, 128]))
            low, high = rng.uniform(-30, -8), rng.uniform(2, 20)
            u = np.sort(rng.random(beams))
            gamma = rng.uniform(0.5, 2.0)  # uneven: denser near one end
            elevation = np.radians(low + (high - low) * u ** gamma)
            elevation += np.radians(rng.normal(0, 0.05, beams))
            step = np.radians(rng.uniform(0.08, 0.4))
            azimuth = np.arange(-half_h, half_h, step)
            el, az = np.meshgrid(elevation, azimuth, indexing='ij')
            az = az + rng.uniform(0, step, el.shape)  # firing jitter
        elif pattern == 'rosette':
            count = int(log_uniform(rng, 2000, 30000))
            radius = rng.uniform(0.5, 1.3) * max(half_h, half_v)
            w1, w2 = rng.uniform(5, 20), rng.uniform(20, 60)
            s = rng.random(count) * 2 * math.pi
            az = radius / 2 * (np.cos(w1 * s) + np.cos(w2 * s))
            el = radius / 2 * (np.sin(w1 * s) - np.sin(w2 * s))
        else:  # raster
            rows, cols = int(rng.integers(16, 128)), int(rng.integers(60, 500))
            cover = rng.uniform(0.6, 1.2)
            el = np.linspace(-half_v, half_v, rows) * cover
            az = np.linspace(-half_h, half_h, cols) * cover
            el, az = np.meshgrid(el, az, indexing='ij')
            el = el + rng.normal(0, 0.1, el.shape) * (el[1, 0] - el[0, 0] if rows > 1 else 0)
        el, az = np.ravel(el), np.ravel(az)
        directions = np.stack([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)], -1)
        directions = directions[directions[:, 2] > 0.05]
        return torch.as_tensor(directions, dtype=torch.float32, device=self.device)

    def _depth_camera(self, rng: np.random.Generator, pattern: str,
                      target: torch.Tensor) -> torch.Tensor:
        """Depth-camera-like input from the true depth (H,W): random points, rows or ToF holes,
        with range noise."""
        H, W, dev = self.height, self.width, self.device
        gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**31)))
        if pattern == 'random':
            share = float(log_uniform(rng, 100 / (H * W), 0.3))
            mask = torch.rand(H, W, device=dev, generator=gen) < share
        elif pattern == 'rows':
            count = int(rng.integers(4, 65))
            mask = torch.zeros(H, W, dtype=torch.bool, device=dev)
            rows = np.linspace(0, H - 1, count).astype(int) + rng.integers(0, max(H // count, 1))
            mask[np.clip(rows, 0, H - 1)] = True
        else:  # tof: dense with low-frequency holes and pixel dropout
            cells = int(rng.integers(4, 24))
            blobs = F.interpolate(torch.rand(1, 1, cells, cells, device=dev, generator=gen),
                                  size=(H, W), mode='bicubic', align_corners=False)[0, 0]
            mask = blobs > rng.uniform(0.1, 0.5)
            mask &= torch.rand(H, W, device=dev, generator=gen) > rng.uniform(0, 0.6)
            edges = F.max_pool2d(target[None, None], 3, 1, 1)[0, 0] > target * 1.05
            mask &= ~(edges & (torch.rand(H, W, device=dev, generator=gen) < 0.7))
        depth = torch.where(mask & (target > 0), target, torch.zeros_like(target))
        sigma = rng.uniform(0, 0.02) + rng.uniform(0, 0.01) * depth
        noisy = depth + sigma * torch.randn(depth.shape, device=dev, generator=gen)
        return torch.where(depth > 0, noisy.clamp_min(0.05), depth)


def _jpeg(rng: np.random.Generator, rgb: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """JPEG artefacts (OpenCV, quality 30-95) on a random `share` of the (B,3,H,W) [0,1]
    images: compressed camera streams are what many robots record."""
    chosen = np.flatnonzero(rng.random(rgb.shape[0]) < share)
    if chosen.size == 0:
        return rgb
    rgb = rgb.clone()
    for b in chosen:
        image = (rgb[b].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        ok, encoded = cv2.imencode('.jpg', np.ascontiguousarray(image[..., ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1] if ok else image
        rgb[b] = torch.from_numpy(np.ascontiguousarray(decoded)).to(rgb).permute(2, 0, 1) / 255
    return rgb


def _splat(points: torch.Tensor, fx: float, fy: float, cx: float, cy: float,
           height: int, width: int) -> torch.Tensor:
    """Camera-frame points (N,3) -> (H,W) sparse depth, nearest point per pixel, 0 elsewhere."""
    z = points[:, 2]
    u = torch.round(points[:, 0] / z.clamp_min(1e-6) * fx + cx).long()
    v = torch.round(points[:, 1] / z.clamp_min(1e-6) * fy + cy).long()
    ok = (z > 0.05) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    flat = torch.full((height * width,), float('inf'), device=points.device)
    flat.scatter_reduce_(0, v[ok] * width + u[ok], z[ok], reduce='amin')
    return torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat)).view(height, width)
