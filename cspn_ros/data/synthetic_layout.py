"""Where the synthetic scene's shapes are (`data.synthetic`): an indoor room or an endless street.

World frame: z up, metres. `RoomLayout` is a furnished room centred at the origin (depths
0.5-8 m); `StreetLayout` an endless street along +x (1-60 m), drawn in 15 m cells each
from its own seed (buildings on both sides, parked cars, poles, balls), so any stretch of it is
reproducible without drawing what lies before. Both give `objects_near(position)`: the shapes
(`data.synthetic_shapes`) a sensor at that world position may see.
"""
from __future__ import annotations

import math

import numpy as np

from cspn_ros.data.synthetic_shapes import Box, Material, Plane, Sphere, random_material

_STREET_CELL_M = 15.0


class RoomLayout:
    """Walls, floor and ceiling of a room centred at the origin plus furniture off the camera's
    circular path (radius 1 m), drawn from rng."""

    def __init__(self, rng: np.random.Generator) -> None:
        hx, hy, height = rng.uniform(3.5, 4.5), rng.uniform(2.8, 3.6), rng.uniform(2.5, 3.0)
        wall = ('stripes', 'noise', 'plain', 'checker')
        objects: list = [Plane(2, 0.0, Material(tuple(rng.uniform(0.3, 0.7, 3)), 'checker',
                                                0.5, 0.5, phase=(0.25, 0.25, 0.5))),
                         Plane(2, height, Material((0.9, 0.9, 0.88), 'plain'))]
        for axis, half in ((0, hx), (1, hy)):
            for sign in (-1, 1):
                objects.append(Plane(axis, sign * half, random_material(rng, wall, dark=False)))
        patterns = ('checker', 'stripes', 'noise', 'plain')
        while len(objects) < 6 + int(rng.integers(7, 12)):
            if rng.random() < 0.65:
                half = rng.uniform([0.15, 0.15, 0.15], [0.75, 0.6, 0.9])
                footprint = float(np.hypot(half[0], half[1]))
                xy = rng.uniform([-hx + 0.2, -hy + 0.2], [hx - 0.2, hy - 0.2])
                shape = Box(np.array([*xy, half[2]]), half, float(rng.uniform(-np.pi, np.pi)),
                            random_material(rng, patterns))
            else:
                radius = float(rng.uniform(0.15, 0.5))
                footprint = radius
                xy = rng.uniform([-hx + radius, -hy + radius], [hx - radius, hy - radius])
                shape = Sphere(np.array([*xy, radius]), radius, random_material(rng, patterns))
            if np.hypot(*xy) - footprint > 1.5:  # clear of the path and the sensors on it
                objects.append(shape)
        self.objects = objects

    def objects_near(self, position: np.ndarray) -> list:
        """Every shape of the room: a closed room is seen from anywhere inside it."""
        return self.objects


class StreetLayout:
    """An endless street along world x: half width drawn from rng (6-8 m), each 15 m cell from
    (seed, cell); cells within max_range (metres) of a sensor are the shapes it may see."""

    def __init__(self, seed: int, rng: np.random.Generator, max_range: float) -> None:
        self.seed, self.max_range = seed, max_range
        self.half_width = float(rng.uniform(6.0, 8.0))
        self.ground = Plane(2, 0.0, Material((0.33, 0.33, 0.36), 'noise', 0.5, 0.5))
        self._cells: dict[int, list] = {}

    def cell(self, cell: int) -> list:
        """Buildings on both sides and street furniture for x in [cell, cell + 1) * 15 m."""
        rng = np.random.default_rng([self.seed, 1, cell + 2**32])
        x0, w = cell * _STREET_CELL_M, self.half_width
        objects = []
        facade = ('stripes', 'noise', 'checker', 'plain')
        for side in (-1, 1):
            if rng.random() < 0.85:
                start = x0 + rng.uniform(0.0, 3.0)
                length = rng.uniform(6.0, x0 + _STREET_CELL_M - 0.5 - start)
                front = w + rng.uniform(0, 1.5)
                depth, height = rng.uniform(6, 12), rng.uniform(5, 20)
                objects.append(Box(np.array([start + length / 2, side * (front + depth / 2),
                                             height / 2]),
                                   np.array([length / 2, depth / 2, height / 2]), 0.0,
                                   random_material(rng, facade)))
            for _ in range(int(rng.integers(0, 3))):
                x = x0 + rng.uniform(1.0, _STREET_CELL_M - 1.0)
                kind = rng.random()
                if kind < 0.5:  # parked car
                    objects.append(Box(np.array([x, side * (w - 1.6 + rng.uniform(-0.3, 0.3)),
                                                 0.75]),
                                       np.array([2.1, 0.9, 0.75]),
                                       float(rng.uniform(-0.15, 0.15)),
                                       random_material(rng, ('plain', 'noise'))))
                elif kind < 0.75:  # pole
                    height = rng.uniform(2.5, 4.5)
                    objects.append(Box(np.array([x, side * (w - 0.5), height / 2]),
                                       np.array([0.12, 0.12, height / 2]), 0.0,
                                       random_material(rng, ('stripes', 'plain'))))
                else:  # ball / bush
                    radius = rng.uniform(0.3, 1.0)
                    objects.append(Sphere(np.array([x, side * rng.uniform(2.6, w - 1.0), radius]),
                                          radius, random_material(rng, ('noise', 'checker'))))
        return objects

    def objects_near(self, position: np.ndarray) -> list:
        """The ground and the cells within max_range of world position (3,) along x."""
        first = math.floor((position[0] - self.max_range) / _STREET_CELL_M)
        last = math.floor((position[0] + self.max_range) / _STREET_CELL_M)
        cells = {c: self._cells.get(c) or self.cell(c) for c in range(first, last + 1)}
        self._cells = cells  # cached: consecutive frames share most cells
        return [self.ground, *(obj for c in sorted(cells) for obj in cells[c])]
