"""Surface appearance of SynthSeasons materials.

Each material maps world points to albedo (linear RGB), emitted light and
glossiness. Textures are anchored to world coordinates (see noise.py) and to the
object's own parameters, so every facade, car and sign is unique; the condition
changes what the world looks like (lit windows, snow, autumn foliage, wet ground,
fallen leaves) but never where a texture detail lies, except where the world
itself changed (snow cover, leaves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import scene as S
from .conditions import Condition
from .noise import f32, fbm, hash_uniform, value_noise


@dataclass
class Surface:
    """Per-pixel inputs of a material function, for N pixels."""

    point: np.ndarray      # (N, 3) world point
    normal: np.ndarray     # (N, 3) world normal
    params: np.ndarray     # (N, 8) primitive parameters
    lo: np.ndarray         # (N, 3) primitive box minimum (sphere centre)
    hi: np.ndarray         # (N, 3) primitive box maximum
    footprint: np.ndarray  # (N,) pixel size on the surface, metres
    condition: Condition
    traversal: int         # seeds what differs between traversals (lit windows...)

    @property
    def facade_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(along, up): the horizontal coordinate along a vertical face, and height."""
        along = np.where(np.abs(self.normal[:, 1]) > 0.5, self.point[:, 0], self.point[:, 1])
        return along, self.point[:, 2]

    @property
    def plane_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Two world coordinates spanning the face: (x, y) on horizontal faces."""
        n = np.abs(self.normal)
        up = n[:, 2] > 0.5
        along, height = self.facade_coords
        return np.where(up, self.point[:, 0], along), np.where(up, self.point[:, 1], height)


@dataclass
class Appearance:
    albedo: np.ndarray    # (N, 3)
    emission: np.ndarray  # (N, 3)
    gloss: np.ndarray     # (N,)


def _grid_lines(coord: np.ndarray, pitch: float, width: float) -> np.ndarray:
    """1 on lines of a regular grid of pitch ``pitch`` and line width ``width``."""
    frac = np.mod(coord, pitch)
    return ((frac < width / 2) | (frac > pitch - width / 2)).astype(np.float32)


def _colour(params: np.ndarray) -> np.ndarray:
    return params[:, :3].astype(np.float32)


def _seed(params: np.ndarray) -> np.ndarray:
    return params[:, 3].astype(np.int64)


def asphalt(s: Surface) -> Appearance:
    x, y = s.point[:, 0], s.point[:, 1]
    fp = s.footprint
    tone = 0.16 + 0.05 * fbm(x, y, 21, 6.0, 3, fp) + 0.07 * fbm(x, y, 22, 0.6, 4, fp)
    patch = value_noise(x / 4.0, y / 3.0, 23) > 0.78
    tone = np.where(patch, tone * 0.72, tone)
    crack = np.abs(fbm(x, y, 24, 2.0, 4, fp)) < 0.006 * np.clip(1.5 - fp * 20, 0, 1.5)
    tone = np.where(crack, tone * 0.7, tone)
    paint = np.zeros_like(tone)
    paint += (np.abs(np.abs(y) - 2.05) < 0.07)  # parking-lane lines
    paint += (np.abs(y) < 0.07) & (np.mod(x, 9.0) < 3.0)  # dashed centre line
    crossing = np.mod(x, 67.0) < 4.0
    paint += crossing & (np.mod(y, 1.0) < 0.5) & (np.abs(y) < 3.6)
    wear = 0.55 + 0.45 * value_noise(x * 2.0, y * 2.0, 25)
    albedo = np.repeat(tone[:, None], 3, 1) * np.array([1.0, 1.0, 1.04], np.float32)
    albedo = albedo + np.clip(paint, 0, 1)[:, None] * wear[:, None] * (f32([0.75, 0.74, 0.7]) - albedo)
    # Manholes: one in some 8 m cells along the lane.
    cell = np.floor(x / 8.0)
    has = hash_uniform(cell, 26) < 0.35
    mx = (cell + 0.2 + 0.6 * hash_uniform(cell, 27)) * 8.0
    my = (hash_uniform(cell, 28) - 0.5) * 4.0
    r = np.hypot(x - mx, y - my)
    hole = has & (r < 0.35)
    albedo[hole] = (0.09 + 0.05 * _grid_lines(x[hole] + y[hole], 0.08, 0.03))[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.full_like(tone, 0.05))


def paving(s: Surface) -> Appearance:
    u, v = s.plane_coords
    base = _colour(s.params)
    up = s.normal[:, 2] > 0.5
    pitch = 0.4 + 0.2 * hash_uniform(_seed(s.params), 31)
    iu, iv = np.floor(u / pitch), np.floor(v / pitch)
    tile = 0.82 + 0.3 * hash_uniform(iu, iv, _seed(s.params))
    grout = np.maximum(_grid_lines(u, pitch, 0.02), _grid_lines(v, pitch, 0.02))
    fade = np.clip(pitch / (4 * s.footprint) - 0.5, 0, 1)
    tone = tile * (1 - 0.45 * grout * fade) * (1 + 0.5 * fbm(u, v, 32, 2.5, 4, s.footprint))
    tone = np.where(up, tone, 0.95 + 0.4 * fbm(u, v, 33, 0.5, 3, s.footprint))  # curb faces
    albedo = base * tone[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.full_like(tone, 0.05))


def grass(s: Surface) -> Appearance:
    u, v = s.plane_coords
    seed = _seed(s.params)
    mix = np.clip(0.5 + fbm(u, v, 41, 3.0, 3, s.footprint) * 1.5, 0, 1)
    green, dry = f32([0.16, 0.3, 0.08]), f32([0.35, 0.32, 0.18])
    albedo = green * (1 - mix[:, None]) + dry * mix[:, None]
    albedo = albedo * (1 + 0.6 * fbm(u, v, 42 + seed % 7, 0.3, 3, s.footprint))[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.full_like(u, 0.02))


def _wall_texture(along: np.ndarray, up: np.ndarray, style: np.ndarray, seed: np.ndarray,
                  fp: np.ndarray) -> np.ndarray:
    """Relative brightness of the wall between windows: plaster, brick, panels or stone."""
    tone = np.empty_like(along)
    for kind, part in enumerate(style.clip(0, 3) == k for k in range(4)):
        if not part.any():
            continue
        a, u, key, f = along[part], up[part], seed[part], fp[part]
        if kind == 0:
            tone[part] = 1 + 0.35 * fbm(a, u, 51, 4.0, 5, f)
        elif kind == 1:
            row = np.floor(u / 0.075)
            shifted = a + np.where(np.mod(row, 2) == 0, 0.0, 0.12)
            fade = np.clip(0.075 / (3 * f) - 0.5, 0, 1)
            mortar = np.maximum(_grid_lines(u, 0.075, 0.012), _grid_lines(shifted, 0.24, 0.012)) * fade
            tone[part] = (0.8 + 0.4 * hash_uniform(row, np.floor(shifted / 0.24), key)) * (1 - 0.4 * mortar)
        elif kind == 2:
            seam = np.maximum(_grid_lines(a, 1.6, 0.03), _grid_lines(u, 1.1, 0.03))
            tone[part] = (0.9 + 0.2 * hash_uniform(np.floor(a / 1.6), np.floor(u / 1.1), key)) * (1 - 0.5 * seam)
        else:
            row = np.floor(u / 0.35)
            shifted = a + 0.3 * row
            joints = np.maximum(_grid_lines(u, 0.35, 0.025), _grid_lines(shifted, 0.6, 0.025))
            tone[part] = (0.75 + 0.5 * hash_uniform(row, np.floor(shifted / 0.6), key)) * (1 - 0.5 * joints)
    grime = 0.85 + 0.3 * value_noise(along * 0.8, up * 0.15, 52)
    return tone * grime


def facade(s: Surface) -> Appearance:
    """Walls with windows per floor, shop fronts, posters and shop signs."""
    along, up = s.facade_coords
    base = _colour(s.params)
    key = _seed(s.params)
    floor_h, win_w, pitch, style = (s.params[:, 4], s.params[:, 5], s.params[:, 6], s.params[:, 7].astype(int))
    vertical = np.abs(s.normal[:, 2]) < 0.5
    start = np.where(np.abs(s.normal[:, 1]) > 0.5, s.lo[:, 0], s.lo[:, 1])
    length = np.where(np.abs(s.normal[:, 1]) > 0.5, s.hi[:, 0] - s.lo[:, 0], s.hi[:, 1] - s.lo[:, 1])
    n_cols = np.maximum(np.floor(length / pitch), 1)
    margin = (length - n_cols * pitch) / 2
    local = along - start - margin
    col = np.floor(local / pitch)
    floor = np.floor(up / floor_h)
    cu = local - (col + 0.5) * pitch            # horizontal offset from the window centre
    cv = up - floor * floor_h                   # height above the floor
    in_cols = (col >= 0) & (col < n_cols)
    ground = floor == 0
    half_w = np.where(ground, 0.42 * pitch, win_w / 2)
    sill = np.where(ground, 0.35, 0.3 * floor_h)
    top = np.where(ground, 0.78 * floor_h, 0.82 * floor_h)
    window = vertical & in_cols & (np.abs(cu) < half_w) & (cv > sill) & (cv < top)
    frame = vertical & in_cols & (np.abs(cu) < half_w + 0.08) & (cv > sill - 0.08) & (cv < top + 0.08) & ~window
    door = window & ground & (hash_uniform(key, col, 61) < 0.3) & (np.abs(cu) < 0.55)
    wall = _wall_texture(along, up, style, key, s.footprint)
    albedo = base * wall[:, None]
    albedo = np.where(frame[:, None], f32([0.75, 0.74, 0.7]) * (0.8 + 0.2 * hash_uniform(key, 62))[:, None], albedo)
    # Glass shows a little of the room behind: a per-window tint and blind height.
    tint = np.stack([hash_uniform(key, floor, col, c) for c in range(3)], -1) * 0.12 + 0.04
    blind = cv > sill + (top - sill) * (0.3 + 0.7 * hash_uniform(key, floor, col, 63))
    glass = np.where(blind[:, None], tint * 2.5, tint)
    albedo = np.where(window[:, None], glass, albedo)
    albedo = np.where(door[:, None], f32([0.25, 0.16, 0.1]) * (0.6 + hash_uniform(key, 64))[:, None], albedo)
    # Posters between the ground-floor windows, and shop signs above them.
    cell = np.floor(along / 2.3)
    poster = vertical & ground & ~window & ~frame & (hash_uniform(key, cell, 65) < 0.35)
    pc = (cell + 0.5) * 2.3
    poster &= (np.abs(along - pc) < 0.3 + 0.4 * hash_uniform(key, cell, 66)) & (up > 0.9) & (up < 2.1)
    pattern = value_noise(along / 0.12, up / 0.12, 67) > 0.5
    pcolour = np.stack([hash_uniform(key, cell, 68 + c) for c in range(3)], -1)
    albedo = np.where(poster[:, None], np.where(pattern[:, None], pcolour, 0.9 - 0.8 * pcolour), albedo)
    has_sign = hash_uniform(key, 70) < 0.5
    band = vertical & has_sign & (up > floor_h * 0.82) & (up < floor_h * 0.97) & (local > 0.3) & (
        local < length - 2 * margin - 0.3)
    letters = value_noise(along / 0.09, up / 0.09, 71 + key % 13) > 0.55
    scolour = np.stack([hash_uniform(key, 72 + c) for c in range(3)], -1)
    albedo = np.where(band[:, None], np.where(letters[:, None], 0.95 - 0.9 * scolour, scolour), albedo)
    albedo = np.where(vertical[:, None], albedo, f32([0.3, 0.29, 0.28]))
    emission = np.zeros_like(albedo)
    gloss = np.where(window & ~door, 0.6, 0.0).astype(np.float32)
    if s.condition.night:
        lit = window & ~door & (hash_uniform(key, floor, col, s.traversal, 73) < s.condition.window_fraction)
        warmth = hash_uniform(key, floor, col, s.traversal, 74)
        colour = np.stack([np.ones_like(warmth), 0.62 + 0.3 * warmth, 0.3 + 0.55 * warmth], -1)
        curtain = 0.5 + 0.5 * value_noise(along / 0.25, up / 0.6, s.traversal % 101)
        emission = np.where(lit[:, None], colour * (1.2 + 2.5 * hash_uniform(key, floor, col, s.traversal, 75))[
            :, None] * curtain[:, None], emission)
        sign_lit = band & (hash_uniform(key, s.traversal, 76) < 0.6)
        emission = np.where(sign_lit[:, None], albedo * 2.0, emission)
    return Appearance(albedo.astype(np.float32), emission.astype(np.float32), gloss)


def roof(s: Surface) -> Appearance:
    u, v = s.plane_coords
    albedo = _colour(s.params) * (1 + 0.4 * fbm(u, v, 81, 2.0, 3, s.footprint))[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.zeros_like(u))


def _noise3(p: np.ndarray, seed: int, scale: float, fp: np.ndarray) -> np.ndarray:
    return (fbm(p[:, 0], p[:, 1], seed, scale, 3, fp) + fbm(p[:, 1], p[:, 2], seed + 1, scale, 3, fp)
            + fbm(p[:, 2], p[:, 0], seed + 2, scale, 3, fp)) / 1.5


def foliage(s: Surface) -> Appearance:
    p = s.point
    clumps = _noise3(p, 91, 0.9, s.footprint)
    leaves = _noise3(p, 94, 0.12, s.footprint)
    base = _colour(s.params)
    mode = s.condition.foliage
    if mode == "autumn":
        hue = s.params[:, 4:5]
        orange, red, yellow = f32([0.62, 0.25, 0.05]), f32([0.5, 0.08, 0.04]), f32([0.65, 0.5, 0.08])
        autumn = np.where(hue < 0.33, orange, np.where(hue < 0.66, red, yellow))
        keep_green = (clumps + 0.5 * hue[:, 0] > 0.55)[:, None]
        base = np.where(keep_green, base * 0.9, autumn)
    elif mode == "bare":
        base = f32([0.16, 0.13, 0.11]) * np.ones_like(base)
    tone = 0.75 + 0.9 * clumps + 0.7 * leaves
    shade = 0.55 + 0.45 * np.clip(s.normal[:, 2] * 0.5 + 0.5, 0, 1)  # self-shadowing inside the crown
    albedo = base * (tone * shade)[:, None]
    return Appearance(np.clip(albedo, 0, 1).astype(np.float32), np.zeros_like(albedo), np.zeros_like(tone))


def bark(s: Surface) -> Appearance:
    along, up = s.facade_coords
    tone = 0.8 + 0.6 * fbm(along * 6, up * 0.6, 101, 1.0, 3) + 0.3 * fbm(along, up, 102, 0.1, 2, s.footprint)
    albedo = _colour(s.params) * tone[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.zeros_like(tone))


def metal(s: Surface) -> Appearance:
    u, v = s.plane_coords
    tone = 0.9 + 0.25 * fbm(u, v, 111, 0.5, 3, s.footprint)
    rust = value_noise(u * 3, v * 3, 112 + _seed(s.params) % 17) > 0.82
    albedo = _colour(s.params) * tone[:, None]
    albedo = np.where(rust[:, None], f32([0.35, 0.18, 0.08]), albedo)
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.full_like(tone, 0.2))


def sign(s: Surface) -> Appearance:
    """Traffic-sign plates (symbols on the face towards oncoming traffic) and signal heads."""
    y, z = s.point[:, 1], s.point[:, 2]
    cy, cz = (s.lo[:, 1] + s.hi[:, 1]) / 2, (s.lo[:, 2] + s.hi[:, 2]) / 2
    half = (s.hi[:, 2] - s.lo[:, 2]) / 2
    dy, dz = (y - cy) / half, (z - cz) / half
    kind = s.params[:, 4].astype(int)
    front = s.normal[:, 0] < -0.5
    colour = _colour(s.params)
    border = (np.abs(dy) > 0.85) | (np.abs(dz) > 0.85)
    r = np.hypot(dy, dz)
    symbol = np.choose(np.clip(kind, 0, 4), [
        r < 0.45, (np.abs(dz) < 0.18) & (np.abs(dy) < 0.6), (dz < 0.5) & (np.abs(dy) < (0.5 - dz) * 0.6),
        (np.abs(dy) < 0.15) | ((dz > 0.1) & (np.abs(dy) < 0.6 - dz)), np.zeros_like(r, bool)])
    white = f32([0.85, 0.85, 0.85])
    albedo = np.where(border[:, None], white, colour)
    albedo = np.where(symbol[:, None], np.where(colour.sum(-1, keepdims=True) > 2.0, 0.05, white), albedo)
    albedo = np.where(front[:, None], albedo, f32([0.4, 0.4, 0.42]))
    emission = np.zeros_like(albedo)
    signal = kind == 4
    if signal.any():  # traffic lights: three lamps facing traffic, one of them lit
        lamp_z = np.floor((z - s.lo[:, 2]) / ((s.hi[:, 2] - s.lo[:, 2]) / 3))
        lamp_c = s.lo[:, 2] + (lamp_z + 0.5) * (s.hi[:, 2] - s.lo[:, 2]) / 3
        in_lamp = signal & front & (np.hypot(y - cy, z - lamp_c) < 0.12)
        lamp_colours = np.array([[0.1, 0.9, 0.2], [1.0, 0.7, 0.05], [1.0, 0.1, 0.05]])
        which = lamp_colours[np.clip(lamp_z.astype(int), 0, 2)]
        on = lamp_z == np.floor(hash_uniform(_seed(s.params), s.traversal, 121) * 3)
        albedo = np.where(in_lamp[:, None], which * 0.3, np.where(signal[:, None], 0.06, albedo))
        emission = np.where((in_lamp & on)[:, None], which * 3.0, 0.0)
    return Appearance(albedo.astype(np.float32), emission.astype(np.float32), np.full_like(y, 0.3))


def car_body(s: Surface) -> Appearance:
    """Paint with panel seams, lights at both ends and a unique number plate."""
    colour = _colour(s.params)
    key = _seed(s.params)
    end = np.abs(s.normal[:, 0]) > 0.5
    y, z = s.point[:, 1], s.point[:, 2]
    cy = (s.lo[:, 1] + s.hi[:, 1]) / 2
    half_w = (s.hi[:, 1] - s.lo[:, 1]) / 2
    along, up = s.facade_coords
    seam = _grid_lines(along - s.lo[:, 0], 1.05, 0.02) * (np.abs(s.normal[:, 1]) > 0.5) * np.clip(
        0.02 / s.footprint, 0, 1)
    tone = (1 + 0.08 * fbm(along, up, 131, 0.5, 2, s.footprint)) * (1 - 0.5 * seam)
    albedo = colour * tone[:, None]
    light = end & (np.abs(np.abs(y - cy) - half_w * 0.75) < half_w * 0.18) & (z > 0.7) & (z < 0.88)
    rear = s.normal[:, 0] < 0  # every car faces +x, the street's direction of travel
    light_colour = np.where(rear[:, None], f32([0.8, 0.05, 0.05]), f32([0.9, 0.9, 0.8]))
    albedo = np.where(light[:, None], light_colour, albedo)
    plate = end & (np.abs(y - cy) < 0.26) & (z > 0.45) & (z < 0.57)
    chars = value_noise((y - cy) / 0.035 + hash_uniform(key, 134) * 5000.0, (z - 0.45) / 0.04, 132) > 0.55
    albedo = np.where(plate[:, None], np.where(chars[:, None], 0.05, 0.85), albedo)
    emission = np.zeros_like(albedo)
    if s.condition.night:
        parked_lit = hash_uniform(key, s.traversal, 133) < 0.08
        emission = np.where((light & parked_lit)[:, None], light_colour * 2.0, emission)
    return Appearance(albedo.astype(np.float32), emission.astype(np.float32), np.full_like(y, 0.5))


def car_glass(s: Surface) -> Appearance:
    """The cabin: painted roof and pillars, dark windows."""
    colour = _colour(s.params)
    side = np.abs(s.normal[:, 1]) > 0.5
    along = s.point[:, 0]
    z = s.point[:, 2]
    length = s.hi[:, 0] - s.lo[:, 0]
    rel = (along - s.lo[:, 0]) / length
    pillar = side & ((rel < 0.06) | (rel > 0.94) | (np.abs(rel - 0.5) < 0.04))
    frame = z > s.hi[:, 2] - 0.06
    painted = (s.normal[:, 2] > 0.5) | pillar | frame
    glass = f32([0.05, 0.06, 0.07]) + 0.05 * value_noise(along * 2, z * 4, 141)[:, None]
    albedo = np.where(painted[:, None], colour, glass)
    gloss = np.where(painted, 0.5, 0.8).astype(np.float32)
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), gloss)


def tire(s: Surface) -> Appearance:
    along, up = s.facade_coords
    centre_a = np.where(np.abs(s.normal[:, 1]) > 0.5, (s.lo[:, 0] + s.hi[:, 0]) / 2, (s.lo[:, 1] + s.hi[:, 1]) / 2)
    r = np.hypot(along - centre_a, up - 0.31)
    hub = (r < 0.18) & (np.abs(s.normal[:, 1]) > 0.5)
    albedo = np.where(hub[:, None], f32([0.45, 0.45, 0.47]), f32([0.04, 0.04, 0.04]))
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.zeros_like(r))


def concrete(s: Surface) -> Appearance:
    u, v = s.plane_coords
    tone = 0.85 + 0.4 * fbm(u, v, 151, 1.5, 4, s.footprint)
    stain = value_noise(u * 0.7, v * 2.0, 152) > 0.75
    albedo = _colour(s.params) * np.where(stain, tone * 0.7, tone)[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.zeros_like(tone))


def fence_bars(s: Surface) -> Appearance:
    along, up = s.facade_coords
    bar = (_grid_lines(along, 0.14, 0.035) > 0) | (np.abs(up - (s.hi[:, 2] - 0.1)) < 0.04) | (np.abs(up - 0.3) < 0.04)
    hedge = f32([0.08, 0.16, 0.05]) * (0.7 + 0.8 * fbm(along, up, 161, 0.3, 3, s.footprint))[:, None]
    albedo = np.where(bar[:, None], _colour(s.params), hedge)
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.zeros_like(up))


def cloth(s: Surface) -> Appearance:
    u, v = s.plane_coords
    tone = 0.85 + 0.3 * fbm(u, v, 171, 0.3, 2, s.footprint)
    albedo = _colour(s.params) * tone[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.zeros_like(tone))


def plain(s: Surface) -> Appearance:
    albedo = _colour(s.params)
    return Appearance(albedo, np.zeros_like(albedo), np.zeros(len(albedo), np.float32))


def lamp_head(s: Surface) -> Appearance:
    albedo = _colour(s.params) * 0.6
    return Appearance(albedo, np.zeros_like(albedo), np.zeros(len(albedo), np.float32))


def awning(s: Surface) -> Appearance:
    along, _ = s.facade_coords
    u, v = s.plane_coords
    coord = np.where(s.normal[:, 2] > 0.5, s.point[:, 0], along)
    stripe = np.mod(coord, 0.6) < 0.3
    albedo = np.where(stripe[:, None], _colour(s.params), f32([0.85, 0.85, 0.82]))
    albedo = albedo * (0.9 + 0.2 * fbm(u, v, 181, 0.5, 2, s.footprint))[:, None]
    return Appearance(albedo.astype(np.float32), np.zeros_like(albedo), np.zeros_like(u))


MATERIALS = {
    S.ASPHALT: asphalt, S.PAVING: paving, S.FACADE: facade, S.ROOF: roof, S.GRASS: grass,
    S.FOLIAGE: foliage, S.BARK: bark, S.METAL: metal, S.SIGN: sign, S.CAR_BODY: car_body,
    S.CAR_GLASS: car_glass, S.CONCRETE: concrete, S.FENCE_BARS: fence_bars, S.CLOTH: cloth, S.SKIN: plain,
    S.LAMP_HEAD: lamp_head, S.TIRE: tire, S.AWNING: awning,
}


def weather_overlay(s: Surface, material: int, look: Appearance) -> Appearance:
    """Snow on upward faces, fallen leaves and wetness on the ground."""
    c = s.condition
    x, y = s.point[:, 0], s.point[:, 1]
    ground = material in (S.ASPHALT, S.PAVING, S.GRASS)
    albedo, gloss = look.albedo, look.gloss
    if c.leaves_on_ground > 0 and ground:
        density = np.clip(c.leaves_on_ground + 0.6 * fbm(x, y, 191, 3.0, 2) - (material == S.ASPHALT) * 0.25 * (
            np.abs(y) < 2.5), 0, 1)
        leaf = (value_noise(x / 0.07, y / 0.07, 192 + s.traversal % 31) < density * 0.6) & (s.normal[:, 2] > 0.5)
        leaf_colour = np.stack([0.55 + 0.2 * value_noise(x / 0.1, y / 0.1, 193), 0.25 + 0.15 * value_noise(
            x / 0.1, y / 0.1, 194), np.full_like(x, 0.05)], -1)
        albedo = np.where(leaf[:, None], leaf_colour, albedo)
    if c.snow > 0:
        facing = np.clip((s.normal[:, 2] - 0.15) * 1.6, 0, 1)
        cover = c.snow + 0.5 * fbm(x, y, 201, 2.0, 3, s.footprint)
        if material == S.ASPHALT:  # tyre tracks keep the driving lane partly clear
            tracks = np.minimum(np.abs(np.abs(y) - 0.9), np.abs(y - 0.0) + 0.3)
            cover = cover - np.clip(0.6 - tracks, 0, 0.6) * 1.4 - 0.15
        mask = np.clip((cover - 0.35) * 4, 0, 1) * facing
        if material in (S.CAR_GLASS, S.CAR_BODY, S.TIRE):
            mask = mask * 0.6
        snow_colour = f32([0.86, 0.88, 0.92]) * (0.92 + 0.15 * fbm(x, y, 202, 0.2, 2, s.footprint))[:, None]
        albedo = albedo * (1 - mask[:, None]) + snow_colour * mask[:, None]
        gloss = gloss * (1 - mask)
    if c.wet > 0 and (ground or material in (S.ROOF, S.CONCRETE)):
        up = s.normal[:, 2] > 0.5
        puddle = up & (fbm(x, y, 211, 2.5, 3) > 0.12 - 0.1 * c.wet)
        darken = 1 - 0.35 * c.wet - 0.25 * puddle
        albedo = albedo * darken[:, None]
        gloss = np.where(up, np.maximum(gloss, 0.35 * c.wet + 0.6 * puddle), gloss).astype(np.float32)
    return Appearance(albedo.astype(np.float32), look.emission, gloss.astype(np.float32))
