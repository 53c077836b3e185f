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
  sensor noise, 8-bit quantisation;
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
import importlib.util
import math
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

#: Sensor patterns and their sampling weights.
PATTERNS = {'spinning': 0.35, 'rosette': 0.1, 'raster': 0.1, 'random': 0.2, 'rows': 0.05,
            'tof': 0.2}
#: Side (pixels) of one texture tile in the atlas.
TILE = 256
_MAX_BOXES, _MAX_SPHERES, _MAX_CYLINDERS, _PLANES = 28, 20, 14, 5
_INF = float('inf')
_EPS = 1e-3
_SKIMAGE_PHOTOS = ('astronaut.png', 'brick.png', 'chelsea.png', 'coffee.png', 'grass.png',
                   'gravel.png', 'rocket.jpg', 'motorcycle_left.png', 'camera.png', 'coins.png',
                   'page.png', 'text.png', 'moon.png', 'hubble_deep_field.jpg', 'retina.jpg',
                   'ihc.png', 'color.png', 'logo.png')


def photo_files() -> list[Path]:
    """The sample photographs shipped by scikit-image (when installed) and matplotlib."""
    files = []
    spec = importlib.util.find_spec('skimage')
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / 'data'
        files += [folder / name for name in _SKIMAGE_PHOTOS if (folder / name).is_file()]
    spec = importlib.util.find_spec('matplotlib')
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / 'mpl-data' / 'sample_data'
        files += [p for p in (folder / 'grace_hopper.jpg',) if p.is_file()]
    return files


def texture_atlas(rng: np.random.Generator, procedural: int = 8) -> np.ndarray:
    """(N, TILE, TILE, 3) float32 [0, 1] tiles: random crops of the sample photos (2 each) and
    `procedural` multi-scale noise tiles."""
    tiles = []
    for path in photo_files():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        image = image[..., ::-1]
        for _ in range(2):
            side = int(min(image.shape[:2]) * rng.uniform(0.4, 1.0))
            top = rng.integers(0, image.shape[0] - side + 1)
            left = rng.integers(0, image.shape[1] - side + 1)
            crop = image[top:top + side, left:left + side]
            tiles.append(cv2.resize(np.ascontiguousarray(crop), (TILE, TILE),
                                    interpolation=cv2.INTER_AREA))
    for _ in range(procedural):
        noise = np.zeros((TILE, TILE, 3), np.float32)
        for octave in range(1, 6):
            cells = 2 ** octave
            layer = rng.random((cells, cells, 3)).astype(np.float32)
            noise += cv2.resize(layer, (TILE, TILE), interpolation=cv2.INTER_CUBIC) / octave
        noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
        tiles.append((noise * 255).astype(np.uint8))
    return np.stack(tiles).astype(np.float32) / 255.0


@dataclasses.dataclass
class Scene:
    """Padded primitive tensors for a batch (B samples), world frame, metres.

    boxes: centre (B,Nb,3), half (B,Nb,3), yaw (B,Nb); spheres: centre (B,Ns,3), radius (B,Ns);
    cylinders (vertical): centre (B,Nc,3) (y = middle), radius (B,Nc), half height (B,Nc);
    planes: normal (B,Np,3), offset (B,Np) (n . p = offset). Inactive primitives have size 0 /
    normal 0. material: (B, Nb+Ns+Nc+Np, 6) per primitive: texture index, tint rgb, texture
    scale (m per tile), specular (0/1).
    """

    box_centre: torch.Tensor
    box_half: torch.Tensor
    box_yaw: torch.Tensor
    sphere_centre: torch.Tensor
    sphere_radius: torch.Tensor
    cyl_centre: torch.Tensor
    cyl_radius: torch.Tensor
    cyl_half: torch.Tensor
    plane_normal: torch.Tensor
    plane_offset: torch.Tensor
    material: torch.Tensor


def _log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


class _SceneSampler:
    """Per-sample scene parameters drawn with numpy, packed into a `Scene`."""

    def __init__(self, rng: np.random.Generator, textures: int) -> None:
        self.rng, self.textures = rng, textures

    def sample(self, batch: int, fovs: np.ndarray) -> tuple[list[dict], list[dict]]:
        scenes, cameras = [], []
        for b in range(batch):
            outdoor = self.rng.random() < 0.6
            scene = self._outdoor(fovs[b]) if outdoor else self._indoor()
            scenes.append(scene)
            cameras.append({'outdoor': outdoor})
        return scenes, cameras

    def _material(self) -> list[float]:
        rng = self.rng
        tint = rng.uniform(0.3, 1.0, 3) * rng.uniform(0.5, 1.0)
        if rng.random() < 0.3:  # greyish
            tint = np.full(3, tint.mean())
        return [float(rng.integers(self.textures)), *tint.tolist(),
                float(_log_uniform(rng, 0.3, 8.0)), float(rng.random() < 0.12)]

    def _outdoor(self, fov: float) -> dict:
        rng = self.rng
        height = float(_log_uniform(rng, 0.3, 3.0))
        boxes, spheres, cylinders = [], [], []
        spread = math.tan(math.radians(fov) / 2) * 1.1

        def ground_position(z_low: float, z_high: float) -> tuple[float, float]:
            z = float(_log_uniform(rng, z_low, z_high))
            return float(rng.uniform(-1, 1) * (z * spread + 2.0)), z

        street = rng.uniform(3, 15)  # buildings line a street of this half width
        for _ in range(rng.integers(0, 10)):  # buildings
            side = rng.choice([-1.0, 1.0])
            half = [rng.uniform(2, 20), rng.uniform(3, 30), rng.uniform(2, 20)]
            z = float(_log_uniform(rng, 5, 250))
            boxes.append(([side * (street + half[0]), height - half[1], z], half,
                          rng.uniform(-0.3, 0.3)))
        for _ in range(rng.integers(0, 8)):  # cars and crates
            half = [rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.0), rng.uniform(0.2, 2.5)]
            x, z = ground_position(1.5, 120)
            boxes.append(([x, height - half[1], z], half, rng.uniform(-math.pi, math.pi)))
        for _ in range(rng.integers(0, 8)):  # clutter, possibly floating
            half = _log_uniform(rng, 0.05, 2.0, 3).tolist()
            x, z = ground_position(0.5, 80)
            y = height - half[1] - (rng.uniform(0, 3) if rng.random() < 0.3 else 0.0)
            boxes.append(([x, y, z], half, rng.uniform(-math.pi, math.pi)))
        for _ in range(rng.integers(0, 8)):  # poles and trees
            radius = float(_log_uniform(rng, 0.03, 0.5))
            half = float(rng.uniform(1, 6))
            x, z = ground_position(1.0, 150)
            cylinders.append(([x, height - half, z], radius, half))
            if rng.random() < 0.5:  # crown of spheres
                crown = rng.uniform(0.8, 4.0)
                for _ in range(rng.integers(2, 5)):
                    offset = rng.normal(0, crown / 2, 3)
                    spheres.append(([x + offset[0], height - 2 * half + offset[1], z + offset[2]],
                                    crown * rng.uniform(0.5, 1.0)))
        for _ in range(rng.integers(0, 6)):  # balls and rocks
            radius = float(_log_uniform(rng, 0.1, 3.0))
            x, z = ground_position(1.0, 100)
            spheres.append(([x, height - radius * rng.uniform(0.3, 1.0), z], radius))
        tilt = np.radians(rng.normal(0, 2, 2))
        normal = np.array([math.sin(tilt[0]), -math.cos(tilt[0]) * math.cos(tilt[1]),
                           math.sin(tilt[1])])
        planes = [(normal, float(normal @ np.array([0.0, height, 0.0])))]
        if rng.random() < 0.15:  # a far backdrop (hill, wall)
            planes.append((np.array([0.0, 0.0, -1.0]), -float(_log_uniform(rng, 40, 250))))
        return _clear_of_sensors({'boxes': boxes, 'spheres': spheres, 'cylinders': cylinders,
                                  'planes': planes, 'height': height, 'margin': 0.8})

    def _indoor(self) -> dict:
        rng = self.rng
        scale = float(_log_uniform(rng, 0.5, 2.0))
        width, depth = rng.uniform(3, 12) * scale, rng.uniform(3, 15) * scale
        ceiling = rng.uniform(2.2, 4.0) * scale
        height = float(rng.uniform(0.2, 0.9) * ceiling)
        x0 = rng.uniform(-0.4, 0.4) * width  # camera x within the room
        z_front = depth * rng.uniform(0.4, 1.0)
        left, right = -width / 2 - x0, width / 2 - x0
        planes = [(np.array([0.0, -1.0, 0.0]), -height),                 # floor y = height
                  (np.array([0.0, 1.0, 0.0]), height - ceiling),          # ceiling
                  (np.array([1.0, 0.0, 0.0]), left),                      # walls
                  (np.array([-1.0, 0.0, 0.0]), -right),
                  (np.array([0.0, 0.0, -1.0]), -z_front)]
        boxes, spheres, cylinders = [], [], []

        def floor_position() -> tuple[float, float]:
            return float(rng.uniform(left, right)), float(rng.uniform(0.3, z_front))

        for _ in range(rng.integers(1, 14)):  # furniture, shelves, clutter
            half = (_log_uniform(rng, 0.05, 1.0, 3) * scale).tolist()
            x, z = floor_position()
            lift = rng.uniform(0, ceiling * 0.6) if rng.random() < 0.25 else 0.0
            boxes.append(([x, height - half[1] - lift, z], half, rng.uniform(-math.pi, math.pi)))
        for _ in range(rng.integers(0, 10)):  # legs, lamps, pipes
            radius = float(_log_uniform(rng, 0.01, 0.2) * scale)
            half = float(rng.uniform(0.2, ceiling / 2))
            x, z = floor_position()
            cylinders.append(([x, height - half, z], radius, half))
        for _ in range(rng.integers(0, 6)):
            radius = float(_log_uniform(rng, 0.05, 0.6) * scale)
            x, z = floor_position()
            spheres.append(([x, height - radius - rng.uniform(0, ceiling / 2), z], radius))
        return _clear_of_sensors({'boxes': boxes, 'spheres': spheres, 'cylinders': cylinders,
                                  'planes': planes, 'height': height, 'margin': 0.35})

    def pack(self, scenes: list[dict], device: torch.device) -> Scene:
        batch = len(scenes)
        counts = (_MAX_BOXES, _MAX_SPHERES, _MAX_CYLINDERS, _PLANES)
        box_c, box_h, box_y = np.zeros((batch, counts[0], 3)), np.zeros((batch, counts[0], 3)), \
            np.zeros((batch, counts[0]))
        sph_c, sph_r = np.zeros((batch, counts[1], 3)), np.zeros((batch, counts[1]))
        cyl_c, cyl_r, cyl_h = np.zeros((batch, counts[2], 3)), np.zeros((batch, counts[2])), \
            np.zeros((batch, counts[2]))
        pl_n, pl_o = np.zeros((batch, counts[3], 3)), np.zeros((batch, counts[3]))
        material = np.zeros((batch, sum(counts), 6))
        for b, scene in enumerate(scenes):
            for i, (centre, half, yaw) in enumerate(scene['boxes'][:counts[0]]):
                box_c[b, i], box_h[b, i], box_y[b, i] = centre, half, yaw
            for i, (centre, radius) in enumerate(scene['spheres'][:counts[1]]):
                sph_c[b, i], sph_r[b, i] = centre, radius
            for i, (centre, radius, half) in enumerate(scene['cylinders'][:counts[2]]):
                cyl_c[b, i], cyl_r[b, i], cyl_h[b, i] = centre, radius, half
            for i, (normal, offset) in enumerate(scene['planes'][:counts[3]]):
                pl_n[b, i], pl_o[b, i] = normal, offset
            for k in range(sum(counts)):
                material[b, k] = self._material()
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        return Scene(as_t(box_c), as_t(box_h), as_t(box_y), as_t(sph_c), as_t(sph_r),
                     as_t(cyl_c), as_t(cyl_r), as_t(cyl_h), as_t(pl_n), as_t(pl_o),
                     as_t(material))


def _clear_of_sensors(scene: dict) -> dict:
    """Drop primitives whose bounding sphere comes within scene['margin'] metres of the camera
    (the sensors sit within that distance of it)."""
    margin = scene['margin']
    scene['boxes'] = [box for box in scene['boxes']
                      if np.linalg.norm(box[0]) - np.linalg.norm(box[1]) > margin]
    scene['spheres'] = [ball for ball in scene['spheres']
                        if np.linalg.norm(ball[0]) - ball[1] > margin]
    scene['cylinders'] = [cyl for cyl in scene['cylinders']
                          if np.linalg.norm(cyl[0]) - math.hypot(cyl[1], cyl[2]) > margin]
    return scene


def cast(scene: Scene, origin: torch.Tensor, directions: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit of rays with the scene, world frame.

    origin (B,3), directions (B,R,3) (any length) -> t (B,R) ray parameter (inf = no hit),
    primitive index (B,R) into scene.material, unit normal (B,R,3) facing the ray.
    """
    o = origin[:, None, :]                                        # (B,1,3)
    d = directions[:, None, :, :]                                 # (B,1,R,3)
    hits = []

    # Boxes: slab test in the box frame (yaw about the world y axis).
    c, s = torch.cos(scene.box_yaw), torch.sin(scene.box_yaw)     # (B,Nb)
    rel = o - scene.box_centre                                     # (B,Nb,3)

    def to_box(v: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x, y, z = torch.broadcast_tensors(v[..., 0], v[..., 1], v[..., 2], c)[:3]
        return torch.stack([c * x - s * z, y, s * x + c * z], dim=-1)

    o_box = to_box(rel, c, s)[:, :, None, :]                      # (B,Nb,1,3)
    d_box = to_box(d, c[..., None], s[..., None])                 # (B,Nb,R,3)
    inv = 1.0 / torch.where(d_box.abs() < 1e-9, torch.full_like(d_box, 1e-9), d_box)
    half = scene.box_half[:, :, None, :]
    t1, t2 = (-half - o_box) * inv, (half - o_box) * inv
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    active = (scene.box_half[..., 0] > 0)[..., None]
    hits.append(torch.where(active & (t_far >= t_near) & (t_near > _EPS), t_near, _INF))

    # Spheres.
    oc = scene.sphere_centre[:, :, None, :] - o[:, :, None, :]     # (B,Ns,1,3)
    dd = (d * d).sum(-1)                                           # (B,1,R)
    b_half = (d * oc).sum(-1)                                      # (B,Ns,R)
    disc = b_half ** 2 - dd * ((oc * oc).sum(-1) - scene.sphere_radius[..., None] ** 2)
    t = (b_half - disc.clamp_min(0).sqrt()) / dd
    active = (scene.sphere_radius > 0)[..., None]
    hits.append(torch.where(active & (disc > 0) & (t > _EPS), t, _INF))

    # Vertical cylinders (no caps).
    ocx = scene.cyl_centre[..., 0:1] - o[..., 0:1]                 # (B,Nc,1)
    ocz = scene.cyl_centre[..., 2:3] - o[..., 2:3]
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]                   # (B,1,R)
    a = (dx * dx + dz * dz).clamp_min(1e-12)
    bh = dx * ocx + dz * ocz
    disc = bh ** 2 - a * (ocx ** 2 + ocz ** 2 - scene.cyl_radius[..., None] ** 2)
    t = (bh - disc.clamp_min(0).sqrt()) / a
    y = o[..., 1:2] + t * dy
    inside = (y - scene.cyl_centre[..., 1:2]).abs() <= scene.cyl_half[..., None]
    active = (scene.cyl_radius > 0)[..., None]
    hits.append(torch.where(active & (disc > 0) & (t > _EPS) & inside, t, _INF))

    # Planes.
    denom = (d * scene.plane_normal[:, :, None, :]).sum(-1)        # (B,Np,R)
    num = scene.plane_offset[..., None] - (o * scene.plane_normal).sum(-1)[..., None]
    t = num / torch.where(denom.abs() < 1e-9, torch.full_like(denom, 1e-9), denom)
    active = (scene.plane_normal.abs().sum(-1) > 0)[..., None]
    hits.append(torch.where(active & (t > _EPS), t, _INF))

    all_t = torch.cat(hits, dim=1)                                 # (B,N,R)
    t, index = all_t.min(dim=1)
    point = origin[:, None, :] + t.clamp(max=1e6)[..., None] * directions
    normal = _normals(scene, index, point)
    facing = torch.where(((normal * directions).sum(-1, keepdim=True) > 0), -normal, normal)
    return t, index, facing


def _normals(scene: Scene, index: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Unit normal (B,R,3) of primitive `index` (B,R) at `point` (B,R,3)."""
    nb, ns, nc = scene.box_half.shape[1], scene.sphere_radius.shape[1], scene.cyl_radius.shape[1]

    def take(values: torch.Tensor, offset: int) -> torch.Tensor:
        local = (index - offset).clamp(0, values.shape[1] - 1)
        if values.dim() == 2:
            return values.gather(1, local)
        return values.gather(1, local[..., None].expand(-1, -1, values.shape[-1]))

    # box
    c, s = torch.cos(take(scene.box_yaw, 0)), torch.sin(take(scene.box_yaw, 0))
    rel = point - take(scene.box_centre, 0)
    local = torch.stack([c * rel[..., 0] - s * rel[..., 2], rel[..., 1],
                         s * rel[..., 0] + c * rel[..., 2]], -1)
    ratio = local / take(scene.box_half, 0).clamp_min(1e-6)
    axis = ratio.abs().argmax(-1, keepdim=True)
    n_local = torch.zeros_like(local).scatter(-1, axis, ratio.gather(-1, axis).sign())
    box_n = torch.stack([c * n_local[..., 0] + s * n_local[..., 2], n_local[..., 1],
                         -s * n_local[..., 0] + c * n_local[..., 2]], -1)
    sphere_n = point - take(scene.sphere_centre, nb)
    cyl_n = point - take(scene.cyl_centre, nb + ns)
    cyl_n = torch.stack([cyl_n[..., 0], torch.zeros_like(cyl_n[..., 0]), cyl_n[..., 2]], -1)
    plane_n = take(scene.plane_normal, nb + ns + nc)
    i = index[..., None]
    normal = torch.where(i < nb, box_n, torch.where(i < nb + ns, sphere_n,
                                                    torch.where(i < nb + ns + nc, cyl_n, plane_n)))
    return F.normalize(normal, dim=-1)


def _rotation(pitch: torch.Tensor, roll: torch.Tensor, yaw: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """(B,3,3) rotation: roll about z, then pitch about x, then yaw about y (radians, (B,))."""
    zeros, ones = torch.zeros_like(pitch), torch.ones_like(pitch)
    cp, sp, cr, sr = torch.cos(pitch), torch.sin(pitch), torch.cos(roll), torch.sin(roll)
    rx = torch.stack([ones, zeros, zeros, zeros, cp, -sp, zeros, sp, cp], -1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zeros, sr, cr, zeros, zeros, zeros, ones], -1).view(-1, 3, 3)
    rotation = rx @ rz
    if yaw is not None:
        cy, sy = torch.cos(yaw), torch.sin(yaw)
        ry = torch.stack([cy, zeros, sy, zeros, ones, zeros, -sy, zeros, cy], -1).view(-1, 3, 3)
        rotation = ry @ rotation
    return rotation


class ProceduralBatches(torch.utils.data.IterableDataset):
    """An endless-per-epoch source of training batches (see the module docstring).

    `steps` batches of `batch_size` samples of height x width per epoch; batch k of epoch e is a
    pure function of (seed, e, k). Iterating yields dicts rgb / sparse / target on `device`.
    Use with a DataLoader of batch_size=None and num_workers=0 (the work runs on the device).
    """

    def __init__(self, steps: int, batch_size: int, height: int, width: int,
                 device: str | torch.device = 'cpu', seed: int = 0) -> None:
        super().__init__()
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
        sampler = _SceneSampler(rng, count)
        scenes, _ = sampler.sample(B, fov)
        scene = sampler.pack(scenes, dev)

        fx = W / 2 / np.tan(np.radians(fov) / 2)
        fy = fx * rng.uniform(0.95, 1.05, B)
        cx = W / 2 + rng.normal(0, 0.03, B) * W
        cy = H / 2 + rng.normal(0, 0.03, B) * H
        K = torch.as_tensor(np.stack([fx, fy, cx, cy], 1), dtype=torch.float32, device=dev)
        pitch = torch.as_tensor(np.radians(rng.normal(0, 6, B)), dtype=torch.float32, device=dev)
        roll = torch.as_tensor(np.radians(rng.normal(0, 3, B)), dtype=torch.float32, device=dev)
        world_from_cam = _rotation(pitch, roll)                      # (B,3,3)

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
                         torch.where((axis == 1)[..., None], point[..., [0, 2]], point[..., [0, 1]]))
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
        """Exposure, gamma, blur, noise, 8-bit quantisation: (B,3,H,W) -> (B,3,H,W) in [0,1]."""
        B, dev = rgb.shape[0], rgb.device
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev).view(B, 1, 1, 1)  # noqa: E731
        rgb = (rgb * as_t(_log_uniform(rng, 0.5, 2.0, B))).clamp(0, 1) ** as_t(
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
        return torch.round(rgb.clamp(0, 1) * 255) / 255

    def _sensor(self, rng: np.random.Generator, scene: Scene, b: int, K: torch.Tensor,
                world_from_cam: torch.Tensor, target: torch.Tensor, atlas: torch.Tensor,
                margins: list[float]) -> torch.Tensor:
        """Sparse depth (H,W) metres in the colour camera of sample b for a random sensor."""
        H, W, dev = self.height, self.width, self.device
        names = list(PATTERNS)
        pattern = names[rng.choice(len(names), p=np.array(list(PATTERNS.values())))]
        fx, fy, cx, cy = (float(x) for x in K)
        if pattern in ('random', 'rows', 'tof'):
            return self._depth_camera(rng, pattern, target)
        directions = self._lidar_directions(rng, pattern, fx, fy, cx, cy)
        if directions.shape[0] == 0:
            return torch.zeros(H, W, device=dev)
        offset = rng.normal(0, 1, 3)
        offset = offset / np.linalg.norm(offset) * rng.uniform(0, 0.9) * margins[b]
        tilt = torch.as_tensor(np.radians(rng.normal(0, 1.5, 3)), dtype=torch.float32, device=dev)
        rotation = _rotation(tilt[0:1], tilt[1:2], tilt[2:3])[0]
        dirs_cam = directions @ rotation.T                              # sensor -> camera axes
        origin_cam = torch.as_tensor(offset, dtype=torch.float32, device=dev)
        origin_world = world_from_cam @ origin_cam
        dirs_world = dirs_cam @ world_from_cam.T
        single = lambda x: x[b:b + 1]  # noqa: E731
        sub = Scene(*(single(getattr(scene, f.name)) for f in dataclasses.fields(Scene)))
        t, index, normal = cast(sub, origin_world[None], dirs_world[None])
        t, index, normal = t[0], index[0], normal[0]
        hit = torch.isfinite(t) & (t < float(_log_uniform(rng, 60, 300)))
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
            count = int(_log_uniform(rng, 2000, 30000))
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
            share = float(_log_uniform(rng, 100 / (H * W), 0.3))
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


def _splat(points: torch.Tensor, fx: float, fy: float, cx: float, cy: float,
           height: int, width: int) -> torch.Tensor:
    """Camera-frame points (N,3) -> (H,W) sparse depth, nearest point per pixel, 0 elsewhere."""
    z = points[:, 2]
    u = torch.round(points[:, 0] / z.clamp_min(1e-6) * fx + cx).long()
    v = torch.round(points[:, 1] / z.clamp_min(1e-6) * fy + cy).long()
    ok = (z > 0.05) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    flat = torch.full((height * width,), _INF, device=points.device)
    flat.scatter_reduce_(0, v[ok] * width + u[ok], z[ok], reduce='amin')
    return torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat)).view(height, width)
