"""Random scenes for the procedural training batches, and the torch ray caster that renders them.

A `Scene` is a padded batch of analytic primitives in the world frame (the colour camera's
optical frame, x right, y down, z forward, rotated by the camera's pitch and roll; the ground at
y = camera height): yaw-oriented boxes, spheres, vertical cylinders (no caps) and planes, each with
a material (a texture tile of the photo atlas, tint, texture scale, specular flag).
`SceneSampler` draws outdoor streets (0.3-250 m, buildings, cars, poles, tree crowns, clutter,
sky) or indoor rooms (scaled 0.5-2x, furniture, thin legs, shelves) with numpy; `cast` gives each
ray's nearest hit on any device. Used by `data.procedural.ProceduralBatches`.
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


def log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


class SceneSampler:
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
                float(log_uniform(rng, 0.3, 8.0)), float(rng.random() < 0.12)]

    def _outdoor(self, fov: float) -> dict:
        rng = self.rng
        height = float(log_uniform(rng, 0.3, 3.0))
        boxes, spheres, cylinders = [], [], []
        spread = math.tan(math.radians(fov) / 2) * 1.1

        def ground_position(z_low: float, z_high: float) -> tuple[float, float]:
            z = float(log_uniform(rng, z_low, z_high))
            return float(rng.uniform(-1, 1) * (z * spread + 2.0)), z

        street = rng.uniform(3, 15)  # buildings line a street of this half width
        for _ in range(rng.integers(0, 10)):  # buildings
            side = rng.choice([-1.0, 1.0])
            half = [rng.uniform(2, 20), rng.uniform(3, 30), rng.uniform(2, 20)]
            z = float(log_uniform(rng, 5, 250))
            boxes.append(([side * (street + half[0]), height - half[1], z], half,
                          rng.uniform(-0.3, 0.3)))
        for _ in range(rng.integers(0, 8)):  # cars and crates
            half = [rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.0), rng.uniform(0.2, 2.5)]
            x, z = ground_position(1.5, 120)
            boxes.append(([x, height - half[1], z], half, rng.uniform(-math.pi, math.pi)))
        for _ in range(rng.integers(0, 8)):  # clutter, possibly floating
            half = log_uniform(rng, 0.05, 2.0, 3).tolist()
            x, z = ground_position(0.5, 80)
            y = height - half[1] - (rng.uniform(0, 3) if rng.random() < 0.3 else 0.0)
            boxes.append(([x, y, z], half, rng.uniform(-math.pi, math.pi)))
        for _ in range(rng.integers(0, 8)):  # poles and trees
            radius = float(log_uniform(rng, 0.03, 0.5))
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
            radius = float(log_uniform(rng, 0.1, 3.0))
            x, z = ground_position(1.0, 100)
            spheres.append(([x, height - radius * rng.uniform(0.3, 1.0), z], radius))
        tilt = np.radians(rng.normal(0, 2, 2))
        normal = np.array([math.sin(tilt[0]), -math.cos(tilt[0]) * math.cos(tilt[1]),
                           math.sin(tilt[1])])
        planes = [(normal, float(normal @ np.array([0.0, height, 0.0])))]
        if rng.random() < 0.15:  # a far backdrop (hill, wall)
            planes.append((np.array([0.0, 0.0, -1.0]), -float(log_uniform(rng, 40, 250))))
        return _clear_of_sensors({'boxes': boxes, 'spheres': spheres, 'cylinders': cylinders,
                                  'planes': planes, 'height': height, 'margin': 0.8})

    def _indoor(self) -> dict:
        rng = self.rng
        scale = float(log_uniform(rng, 0.5, 2.0))
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
            half = (log_uniform(rng, 0.05, 1.0, 3) * scale).tolist()
            x, z = floor_position()
            lift = rng.uniform(0, ceiling * 0.6) if rng.random() < 0.25 else 0.0
            boxes.append(([x, height - half[1] - lift, z], half, rng.uniform(-math.pi, math.pi)))
        for _ in range(rng.integers(0, 10)):  # legs, lamps, pipes
            radius = float(log_uniform(rng, 0.01, 0.2) * scale)
            half = float(rng.uniform(0.2, ceiling / 2))
            x, z = floor_position()
            cylinders.append(([x, height - half, z], radius, half))
        for _ in range(rng.integers(0, 6)):
            radius = float(log_uniform(rng, 0.05, 0.6) * scale)
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


def rotation_matrix(pitch: torch.Tensor, roll: torch.Tensor, yaw: Optional[torch.Tensor] = None
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
