"""The geometry of a SynthSeasons street.

World frame (metres): x runs along the street, y points to the left side of the
street when looking along +x, z points up; the road surface is z = 0. The street is
one-way, 8 m wide (a 4 m driving lane in the middle, a parking lane on each side),
with raised sidewalks, front yards, buildings of varied width, depth and height,
and a second row of tall buildings behind them.

A scene is a list of primitives, axis-aligned boxes and spheres, each carrying a
material, a Cityscapes trainId and an *object key*. Static objects have keys below
``DYNAMIC_KEY_BASE``. Parked cars and pedestrians are drawn anew for every traversal;
their key encodes where they stand, so an object that stays in place between two
traversals keeps its key and one that moved does not. Correspondences are only
generated between surface points with equal keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .noise import hash_uniform

# Cityscapes trainIds used by the generator.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN = 0, 1, 2, 3, 4, 5, 6, 7
VEGETATION, TERRAIN, SKY, PERSON, CAR = 8, 9, 10, 11, 13

# Materials: how a primitive is textured (see shading.py).
ASPHALT, PAVING, FACADE, ROOF, GRASS, FOLIAGE, BARK = 0, 1, 3, 4, 5, 6, 7
METAL, SIGN, CAR_BODY, CAR_GLASS, CONCRETE, FENCE_BARS, CLOTH, SKIN, LAMP_HEAD, TIRE = (
    8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
AWNING = 18

DYNAMIC_KEY_BASE = 1_000_000_000
ROAD_HALF_WIDTH = 4.0
SIDEWALK_OUTER = 7.0
CURB_HEIGHT = 0.15
PARKING_Y = 3.05


@dataclass
class Primitives:
    """A set of primitives, P of them.

    Attributes:
        is_sphere: (P,) bool.
        lo: (P, 3) box minimum corner, or sphere centre.
        hi: (P, 3) box maximum corner; for a sphere (radius, 0, 0).
        material: (P,) int16 material id.
        label: (P,) uint8 Cityscapes trainId.
        key: (P,) int64 object key.
        params: (P, 8) float32 material parameters (colour rgb, seed, style...).
    """

    is_sphere: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    material: np.ndarray
    label: np.ndarray
    key: np.ndarray
    params: np.ndarray

    def __len__(self) -> int:
        return len(self.material)

    @cached_property
    def lo32(self) -> np.ndarray:
        return self.lo.astype(np.float32)

    @cached_property
    def hi32(self) -> np.ndarray:
        return self.hi.astype(np.float32)

    @staticmethod
    def empty() -> Primitives:
        return Primitives(np.zeros(0, bool), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int16),
                          np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros((0, 8), np.float32))

    @staticmethod
    def concatenate(parts: list[Primitives]) -> Primitives:
        return Primitives(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in ("is_sphere", "lo", "hi", "material", "label", "key", "params")))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (P, 3), (P, 3) of every primitive, spheres included."""
        radius = self.hi[:, :1]
        lo = np.where(self.is_sphere[:, None], self.lo - radius, self.lo)
        hi = np.where(self.is_sphere[:, None], self.lo + radius, self.hi)
        return lo, hi


class _Builder:
    """Accumulates primitives; keys count up from 1 for static objects."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.next_key = 1

    def new_key(self) -> int:
        self.next_key += 1
        return self.next_key - 1

    def box(self, lo, hi, material, label, key, params=()) -> None:
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        self.rows.append((False, lo, hi, material, label, key, params))

    def sphere(self, centre, radius, material, label, key, params=()) -> None:
        self.rows.append((True, centre, (radius, 0.0, 0.0), material, label, key, params))

    def build(self) -> Primitives:
        n = len(self.rows)
        params = np.zeros((n, 8), np.float32)
        for i, row in enumerate(self.rows):
            params[i, : len(row[6])] = row[6]
        return Primitives(
            is_sphere=np.array([r[0] for r in self.rows], bool).reshape(n),
            lo=np.array([r[1] for r in self.rows], np.float64).reshape(n, 3),
            hi=np.array([r[2] for r in self.rows], np.float64).reshape(n, 3),
            material=np.array([r[3] for r in self.rows], np.int16).reshape(n),
            label=np.array([r[4] for r in self.rows], np.uint8).reshape(n),
            key=np.array([r[5] for r in self.rows], np.int64).reshape(n),
            params=params,
        )


@dataclass
class Lamps:
    """Street lamps: (L, 3) light positions and (L,) integer ids."""

    position: np.ndarray
    ident: np.ndarray


@dataclass
class Scene:
    """A street: its static primitives, lamps, and the parking spots of its cars.

    Attributes:
        seed: the street's seed; textures and every draw derive from it.
        x_range: (start, end) of the street along x, metres.
        static: primitives shared by every traversal.
        lamps: the street lamps.
        heightfield: (Hx, Hy) max height of static geometry on a 0.1 m grid, for
            sun shadows; ``heightfield_origin`` is the (x, y) of cell (0, 0).
    """

    seed: int
    x_range: tuple[float, float]
    static: Primitives
    lamps: Lamps
    parking_spots: np.ndarray  # (S, 3): x centre, side (+1 left / -1 right), length
    heightfield: np.ndarray
    heightfield_origin: tuple[float, float]
    heightfield_cell: float = 0.1
    _cache: dict = field(default_factory=dict, repr=False)

    def primitives(self, traversal_seed: int | None, parked_cars: float = 1.0) -> Primitives:
        """Static primitives plus the cars and pedestrians of one traversal.

        ``traversal_seed=None`` gives the reference traversal's placement; otherwise
        ``parked_cars`` scales the chance that a parking spot holds a car.
        """
        cache_key = (traversal_seed, parked_cars)
        if cache_key not in self._cache:
            dynamic = _dynamic_objects(self, traversal_seed, parked_cars)
            self._cache[cache_key] = Primitives.concatenate([self.static, dynamic])
        return self._cache[cache_key]

    def dynamic_heightfield(self, traversal_seed: int | None, parked_cars: float = 1.0) -> np.ndarray:
        """The heightfield with the traversal's cars added."""
        cache_key = ("heightfield", traversal_seed, parked_cars)
        if cache_key in self._cache:
            return self._cache[cache_key]
        prims = self.primitives(traversal_seed, parked_cars)
        dynamic = prims.key >= DYNAMIC_KEY_BASE
        field_ = self.heightfield.copy()
        lo, hi = prims.bounds()
        _rasterise_heights(field_, self.heightfield_origin, self.heightfield_cell, lo[dynamic], hi[dynamic])
        self._cache[cache_key] = field_
        return field_


_FACADE_COLOURS = np.array([
    [0.55, 0.27, 0.20], [0.70, 0.62, 0.50], [0.82, 0.80, 0.74], [0.52, 0.53, 0.55],
    [0.45, 0.50, 0.58], [0.78, 0.66, 0.45], [0.62, 0.40, 0.30], [0.35, 0.33, 0.32],
    [0.75, 0.72, 0.62], [0.60, 0.65, 0.58], [0.85, 0.55, 0.42], [0.40, 0.42, 0.48],
], np.float32)
_CAR_COLOURS = np.array([
    [0.8, 0.8, 0.82], [0.1, 0.1, 0.12], [0.55, 0.05, 0.05], [0.1, 0.2, 0.5], [0.45, 0.47, 0.5],
    [0.85, 0.85, 0.8], [0.1, 0.35, 0.15], [0.7, 0.55, 0.1], [0.3, 0.3, 0.32], [0.6, 0.25, 0.05],
], np.float32)
_SIGN_COLOURS = np.array([
    [0.75, 0.08, 0.08], [0.05, 0.25, 0.65], [0.9, 0.75, 0.1], [0.1, 0.5, 0.2], [0.9, 0.9, 0.9],
], np.float32)


def build_scene(seed: int, x_start: float, x_end: float) -> Scene:
    """Build the static street between ``x_start`` and ``x_end`` (metres)."""
    rng = np.random.default_rng(seed)
    b = _Builder()
    ground_key = b.new_key()
    # Ground beyond everything, then the road and the sidewalks with their curbs.
    b.box((x_start - 200, -200, -1), (x_end + 200, 200, -0.02), GRASS, TERRAIN, ground_key, (0.3, 0.4, 0.2, 1))
    b.box((x_start - 60, -ROAD_HALF_WIDTH, -0.5), (x_end + 60, ROAD_HALF_WIDTH, 0.0), ASPHALT, ROAD,
          b.new_key(), (0.2, 0.2, 0.21, 2))
    for side in (-1, 1):
        inner, outer = side * ROAD_HALF_WIDTH, side * SIDEWALK_OUTER
        b.box((x_start - 60, inner, -0.5), (x_end + 60, outer, CURB_HEIGHT), PAVING, SIDEWALK,
              b.new_key(), (0.55, 0.53, 0.5, 3 + side))
    for side in (-1, 1):
        _build_side(b, rng, side, x_start, x_end)
        _build_background(b, rng, side, x_start, x_end)
    _build_far_end(b, rng, x_end)
    lamps = _build_street_furniture(b, rng, x_start, x_end)
    static = b.build()

    parking = _parking_spots(rng, x_start, x_end, lamps)
    origin = (x_start - 60.0, -60.0)
    cell = 0.1
    heightfield = np.zeros((int((x_end - x_start + 180) / cell), int(120 / cell)), np.float32)
    lo, hi = static.bounds()
    tall = (hi[:, 2] - lo[:, 2] > 0.3) & (lo[:, 2] > -0.1)
    _rasterise_heights(heightfield, origin, cell, lo[tall], hi[tall])
    return Scene(seed, (x_start, x_end), static, lamps, parking, heightfield, origin, cell)


def _build_side(b: _Builder, rng: np.random.Generator, side: int, x_start: float, x_end: float) -> None:
    """Front yards, buildings, gaps with walls or fences, balconies and awnings on one side."""
    x = x_start - 40.0
    while x < x_end + 60.0:
        if rng.random() < 0.12:  # a gap between buildings: a wall or a fence, then a yard
            width = rng.uniform(3.0, 8.0)
            y0 = side * SIDEWALK_OUTER
            b.box((x, y0, -0.5), (x + width, side * 40, 0.05), GRASS, TERRAIN, b.new_key(),
                  (0.28, 0.4, 0.18, rng.integers(1 << 20)))
            kind = rng.random()
            if kind < 0.5:
                height = rng.uniform(0.9, 2.0)
                b.box((x, y0 + side * 0.05, 0), (x + width, y0 + side * 0.35, height), CONCRETE, WALL,
                      b.new_key(), (*rng.uniform(0.45, 0.7, 3), rng.integers(1 << 20)))
            else:
                height = rng.uniform(1.2, 1.8)
                b.box((x, y0 + side * 0.1, 0), (x + width, y0 + side * 0.14, height), FENCE_BARS, FENCE,
                      b.new_key(), (*rng.uniform(0.15, 0.4, 3), rng.integers(1 << 20)))
            x += width
            continue
        width = rng.uniform(7.0, 22.0)
        setback = rng.choice([0.0, 0.0, rng.uniform(1.0, 4.0)])
        depth = rng.uniform(9.0, 16.0)
        height = rng.uniform(6.0, 24.0)
        front = side * (SIDEWALK_OUTER + setback)
        if setback > 0:
            material, label, colour = (GRASS, TERRAIN, (0.3, 0.42, 0.18)) if rng.random() < 0.6 else (
                PAVING, SIDEWALK, (0.5, 0.48, 0.46))
            b.box((x, side * SIDEWALK_OUTER, -0.5), (x + width, front, 0.1), material, label, b.new_key(),
                  (*colour, rng.integers(1 << 20)))
        key = b.new_key()
        colour = _FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))] * rng.uniform(0.85, 1.1, 3)
        floor_height = rng.uniform(2.8, 3.6)
        window_width = rng.uniform(0.8, 1.6)
        window_pitch = window_width + rng.uniform(0.8, 2.2)
        style = rng.integers(0, 4)  # 0 plaster, 1 brick, 2 panels, 3 stone
        params = (*np.clip(colour, 0, 1), key, floor_height, window_width, window_pitch, style)
        b.box((x, front, 0), (x + width, front + side * depth, height), FACADE, BUILDING, key, params)
        b.box((x - 0.02, front + side * 0.3, height), (x + width + 0.02, front + side * (depth - 0.3),
              height + rng.uniform(0.4, 1.5)), ROOF, BUILDING, key, (0.3, 0.28, 0.27, key))
        if rng.random() < 0.4:  # shop awning over the ground floor
            a0 = x + rng.uniform(0.5, 2.0)
            a1 = min(x + width - 0.5, a0 + rng.uniform(3.0, 8.0))
            b.box((a0, front, 2.4), (a1, front - side * rng.uniform(0.8, 1.5), 2.7), AWNING, BUILDING, key,
                  (*rng.uniform(0.1, 0.9, 3), rng.integers(1 << 20)))
        if rng.random() < 0.45 and height > 9:  # balconies on the upper floors
            n_floors = int(height / floor_height)
            for floor in range(1, n_floors):
                for col in range(int(width / window_pitch)):
                    if rng.random() < 0.45:
                        cx = x + (col + 0.5) * window_pitch + (width - int(width / window_pitch) * window_pitch) / 2
                        z0 = floor * floor_height
                        b.box((cx - window_width * 0.8, front, z0 - 0.05),
                              (cx + window_width * 0.8, front - side * 0.9, z0 + 0.9), CONCRETE, BUILDING,
                              key, (*np.clip(colour * 0.9, 0, 1), rng.integers(1 << 20)))
        x += width + (rng.uniform(0.0, 0.5) if rng.random() < 0.5 else 0.0)


def _build_background(b: _Builder, rng: np.random.Generator, side: int, x_start: float, x_end: float) -> None:
    """A second row of tall buildings so that gaps do not open onto empty land."""
    x = x_start - 80.0
    while x < x_end + 150.0:
        width = rng.uniform(12, 30)
        key = b.new_key()
        colour = _FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))] * rng.uniform(0.8, 1.05, 3)
        params = (*np.clip(colour, 0, 1), key, rng.uniform(3.0, 3.5), rng.uniform(1.0, 1.8),
                  rng.uniform(2.2, 3.6), rng.integers(0, 4))
        y0 = side * rng.uniform(34, 42)
        b.box((x, y0, 0), (x + width, y0 + side * 15, rng.uniform(14, 40)), FACADE, BUILDING, key, params)
        x += width + rng.uniform(0, 4)


def _build_far_end(b: _Builder, rng: np.random.Generator, x_end: float) -> None:
    """A row of buildings closing the view far down the street."""
    for x0, x1 in ((x_end + 160, x_end + 180),):
        for y0 in np.arange(-45, 45, 15.0):
            key = b.new_key()
            colour = _FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))]
            params = (*colour, key, 3.2, 1.4, 3.0, rng.integers(0, 4))
            b.box((x0, y0, 0), (x1, y0 + 15, rng.uniform(15, 45)), FACADE, BUILDING, key, params)


def _build_street_furniture(b: _Builder, rng: np.random.Generator, x_start: float, x_end: float) -> Lamps:
    """Street lamps, trees, traffic signs and traffic lights on the sidewalks."""
    lamp_positions, lamp_ids = [], []
    x = x_start - 30 + rng.uniform(0, 10)
    side = 1
    while x < x_end + 60:  # lamps, alternating sides
        y = side * (ROAD_HALF_WIDTH + 0.5)
        key = b.new_key()
        height = rng.uniform(6.0, 7.5)
        b.box((x - 0.09, y - 0.09, 0), (x + 0.09, y + 0.09, height), METAL, POLE, key, (0.35, 0.36, 0.38, key))
        arm_end = y - side * 1.6
        b.box((x - 0.05, min(y, arm_end), height - 0.1), (x + 0.05, max(y, arm_end), height), METAL, POLE, key,
              (0.35, 0.36, 0.38, key))
        b.box((x - 0.3, arm_end - 0.15, height - 0.3), (x + 0.3, arm_end + 0.15, height - 0.08), LAMP_HEAD, POLE,
              key, (0.8, 0.8, 0.75, key))
        lamp_positions.append((x, arm_end, height - 0.35))
        lamp_ids.append(key)
        x += rng.uniform(16, 26)
        side = -side
    for side in (-1, 1):  # trees
        x = x_start - 30 + rng.uniform(0, 8)
        while x < x_end + 60:
            if rng.random() < 0.55:
                y = side * (SIDEWALK_OUTER - 1.1) + rng.uniform(-0.2, 0.2)
                key = b.new_key()
                trunk = rng.uniform(2.5, 3.6)
                b.box((x - 0.15, y - 0.15, 0), (x + 0.15, y + 0.15, trunk + 0.8), BARK, VEGETATION, key,
                      (0.3, 0.22, 0.15, key))
                radius = rng.uniform(1.4, 2.3)
                hue = rng.uniform(0, 1)
                b.sphere((x, y, trunk + radius * 0.8), radius, FOLIAGE, VEGETATION, key,
                         (0.18 + 0.08 * hue, 0.36 + 0.1 * hue, 0.12, key, hue))
                if rng.random() < 0.5:
                    r2 = radius * rng.uniform(0.6, 0.85)
                    b.sphere((x + rng.uniform(-0.8, 0.8), y, trunk + radius * 1.3 + r2 * 0.3), r2, FOLIAGE,
                             VEGETATION, key, (0.2 + 0.08 * hue, 0.4 + 0.1 * hue, 0.13, key, hue))
            x += rng.uniform(7, 14)
    for _ in range(int((x_end - x_start + 80) / 18)):  # traffic signs
        x, side = rng.uniform(x_start - 30, x_end + 60), rng.choice([-1, 1])
        y = side * (ROAD_HALF_WIDTH + 0.35)
        key = b.new_key()
        top = rng.uniform(2.4, 3.0)
        b.box((x - 0.04, y - 0.04, 0), (x + 0.04, y + 0.04, top), METAL, POLE, key, (0.5, 0.5, 0.52, key))
        colour = _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))]
        size = rng.uniform(0.5, 0.8)
        b.box((x - 0.06, y - size / 2, top - size), (x - 0.02, y + size / 2, top), SIGN, TRAFFIC_SIGN, key,
              (*colour, key, rng.integers(0, 4)))
    for x in np.arange(x_start + rng.uniform(20, 40), x_end + 60, rng.uniform(45, 70)):  # traffic lights
        for side in (-1, 1):
            y = side * (ROAD_HALF_WIDTH + 0.6)
            key = b.new_key()
            b.box((x - 0.07, y - 0.07, 0), (x + 0.07, y + 0.07, 3.2), METAL, POLE, key, (0.2, 0.2, 0.22, key))
            b.box((x - 0.2, y - 0.18, 3.2), (x + 0.05, y + 0.18, 4.2), SIGN, TRAFFIC_LIGHT, key,
                  (0.08, 0.08, 0.08, key, 4))
    return Lamps(np.array(lamp_positions, np.float64), np.array(lamp_ids, np.int64))


def _parking_spots(rng: np.random.Generator, x_start: float, x_end: float, lamps: Lamps) -> np.ndarray:
    spots = []
    for side in (-1, 1):
        x = x_start - 20 + rng.uniform(0, 3)
        while x < x_end + 40:
            length = rng.uniform(3.8, 4.8)
            spots.append((x + length / 2, side, length))
            x += length + rng.uniform(0.8, 2.5)
    return np.array(spots, np.float64)


def _dynamic_objects(scene: Scene, traversal_seed: int | None, parked_cars: float = 1.0) -> Primitives:
    """Parked cars and pedestrians of one traversal.

    Every parking spot has a reference occupant (or none). Another traversal keeps
    that occupant with probability 0.45, and otherwise puts a different car there,
    shifted along the kerb, with probability 0.6, or leaves the spot empty;
    ``parked_cars`` scales both probabilities.
    """
    b = _Builder()
    n = len(scene.parking_spots)
    spot_ids = np.arange(n)
    ref_occupied = hash_uniform(spot_ids, scene.seed, 11) < 0.65
    if traversal_seed is None:
        variant = np.where(ref_occupied, 0, -1)
    else:
        u = hash_uniform(spot_ids, scene.seed, traversal_seed, 12)
        keep = ref_occupied & (u < 0.45 * parked_cars)
        other = hash_uniform(spot_ids, scene.seed, traversal_seed, 13) < 0.6 * parked_cars
        variant = np.where(keep, 0, np.where(other, 1 + (traversal_seed % 997), -1))
    for spot, (x, side, length) in enumerate(scene.parking_spots):
        if variant[spot] < 0:
            continue
        _add_car(b, scene.seed, spot, int(variant[spot]), x, side, length)
    n_people = int((scene.x_range[1] - scene.x_range[0]) / 12)
    for person in range(n_people):
        h = [hash_uniform(person, scene.seed, -1 if traversal_seed is None else traversal_seed, k)
             for k in range(8)]
        x = scene.x_range[0] - 10 + float(h[0]) * (scene.x_range[1] - scene.x_range[0] + 40)
        side = 1 if h[1] < 0.5 else -1
        y = side * (ROAD_HALF_WIDTH + 0.8 + float(h[2]) * 1.8)
        key = DYNAMIC_KEY_BASE + int(hash_uniform(x * 100, y * 100, 7) * (1 << 24)) * 4 + 3
        height = 1.55 + 0.35 * float(h[3])
        shirt = np.array([h[4], h[5], h[6]], np.float32) * 0.8 + 0.1
        trousers = np.array([0.15, 0.15, 0.25 + 0.3 * float(h[7])], np.float32)
        leg = 0.47 * height
        seed = key % (1 << 24)  # texture seeds must survive float32
        b.box((x - 0.12, y - 0.18, CURB_HEIGHT), (x + 0.12, y + 0.18, CURB_HEIGHT + leg), CLOTH, PERSON, key,
              (*trousers, seed))
        b.box((x - 0.14, y - 0.24, CURB_HEIGHT + leg), (x + 0.14, y + 0.24, CURB_HEIGHT + 0.86 * height), CLOTH,
              PERSON, key, (*shirt, seed))
        b.sphere((x, y, CURB_HEIGHT + 0.93 * height), 0.11, SKIN, PERSON, key, (0.75, 0.58, 0.45, seed))
    return b.build() if b.rows else Primitives.empty()


def _add_car(b: _Builder, seed: int, spot: int, variant: int, x: float, side: float, length: float) -> None:
    """A parked car: body, cabin and wheels, all labelled car and sharing one key."""
    u = hash_uniform(spot, variant, seed, np.arange(6))
    x = x + (0.0 if variant == 0 else (float(u[0]) - 0.5) * 1.5)
    length = length * (0.92 + 0.08 * float(u[1]))
    y = side * PARKING_Y
    width = 1.7 + 0.15 * float(u[2])
    colour = _CAR_COLOURS[int(u[3] * len(_CAR_COLOURS))]
    key = DYNAMIC_KEY_BASE + (spot * 1000 + variant % 1000) * 4 + 1
    params = (*colour, key % (1 << 24))  # the texture seed must survive float32
    half_l, half_w = length / 2, width / 2
    b.box((x - half_l, y - half_w, 0.3), (x + half_l, y + half_w, 0.95), CAR_BODY, CAR, key, params)
    cabin_front = x + half_l * (0.35 + 0.1 * float(u[4]))  # cars face +x, the direction of travel
    cabin_rear = x - half_l * 0.75
    b.box((cabin_rear, y - half_w + 0.08, 0.95), (cabin_front, y + half_w - 0.08, 1.45 + 0.1 * float(u[5])),
          CAR_GLASS, CAR, key, params)
    for dx in (-0.7 * half_l, 0.7 * half_l):
        for dy in (-half_w + 0.12, half_w - 0.12):
            b.box((x + dx - 0.33, y + dy - 0.12, 0.0), (x + dx + 0.33, y + dy + 0.12, 0.62), TIRE, CAR, key,
                  (0.05, 0.05, 0.05, key % (1 << 24)))


def _rasterise_heights(field_: np.ndarray, origin: tuple[float, float], cell: float,
                       lo: np.ndarray, hi: np.ndarray) -> None:
    """Raise ``field_`` to the top of every box (N, 3) given by ``lo``/``hi``, in place."""
    nx, ny = field_.shape
    i0 = np.clip(((lo[:, 0] - origin[0]) / cell).astype(int), 0, nx)
    i1 = np.clip(np.ceil((hi[:, 0] - origin[0]) / cell).astype(int), 0, nx)
    j0 = np.clip(((lo[:, 1] - origin[1]) / cell).astype(int), 0, ny)
    j1 = np.clip(np.ceil((hi[:, 1] - origin[1]) / cell).astype(int), 0, ny)
    for a, b_, c, d, top in zip(i0, i1, j0, j1, hi[:, 2]):
        if a < b_ and c < d:
            np.maximum(field_[a:b_, c:d], top, out=field_[a:b_, c:d])
