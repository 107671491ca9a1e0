"""Lighting, sky and sensor model of SynthSeasons.

Radiance is computed in linear RGB: albedo × (sky light + sun light × shadow +
street-lamp light) + emission, plus glossy reflections on wet or glazed surfaces.
Sun shadows are cast by marching towards the sun over a heightfield of the street.
The sensor then applies auto-exposure with a gain limit (so night stays dark and
noisy), white balance, motion blur, rain streaks or snowflakes, shot and read
noise, vignetting and a tone curve, and quantises to 8 bits.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter1d

from .conditions import Condition
from .materials import MATERIALS, Surface, weather_overlay
from .noise import f32, fbm, hash_uniform
from .raycast import GBuffer
from .scene import Primitives, Scene

LAMP_RANGE = 45.0


def sun_direction(c: Condition) -> np.ndarray:
    """(3,) unit vector from a surface towards the sun."""
    el, az = np.radians(c.sun_elevation), np.radians(c.sun_azimuth)
    return f32([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def sky_colour(direction: np.ndarray, c: Condition, seed: int, octaves: int = 5) -> np.ndarray:
    """(N, 3) radiance of the sky seen along unit directions (N, 3)."""
    elevation = np.clip(direction[:, 2], -0.2, 1)
    blend = np.clip(elevation * 2.5, 0, 1)[:, None] ** 0.7
    colour = (f32(c.sky_horizon) * (1 - blend) + f32(c.sky_zenith) * blend) * c.sky_intensity
    if c.clouds > 0:
        lift = np.maximum(direction[:, 2], 0.03)
        u, v = direction[:, 0] / lift * 300, direction[:, 1] / lift * 300
        density = np.clip((fbm(u, v, seed, 900, octaves) + c.clouds - 0.45) * 2.2, 0, 1)[:, None]
        cloud = np.full(3, np.mean(c.sky_horizon) * 1.05 * c.sky_intensity)
        if c.night:
            cloud = f32([0.05, 0.04, 0.035]) * max(c.sky_intensity * 20, 0.2)
        colour = colour * (1 - density) + cloud * density
    if c.casts_shadows:
        cosine = direction @ sun_direction(c)
        colour = colour + f32(c.sun_colour) * (np.clip((cosine - 0.9995) * 4000, 0, 1) * 20
                                                    + 0.5 * np.clip(cosine, 0, 1) ** 40)[:, None]
    return colour


def _sun_shadow(points: np.ndarray, normals: np.ndarray, c: Condition, heightfield: np.ndarray,
                origin: tuple[float, float], cell: float) -> np.ndarray:
    """(N,) 1 where the sun reaches the points (N, 3), 0 in shadow."""
    light = sun_direction(c)
    lit = (normals @ light) > 0
    result = lit.astype(np.float32)
    idx = np.flatnonzero(lit)
    if len(idx) == 0:
        return result
    start = points[idx] + normals[idx] * 0.05
    horizontal = light[:2] / np.linalg.norm(light[:2])
    rise = np.tan(np.radians(c.sun_elevation))
    top = float(heightfield.max())
    step = 0.6
    nx, ny = heightfield.shape
    for k in range(1, int(min(45.0, (top + 1) / max(rise, 1e-3)) / step) + 1):
        if len(idx) == 0:
            break
        h = k * step
        q = start[:, :2] + h * horizontal
        z = start[:, 2] + h * rise
        i = np.clip(((q[:, 0] - origin[0]) / cell).astype(int), 0, nx - 1)
        j = np.clip(((q[:, 1] - origin[1]) / cell).astype(int), 0, ny - 1)
        blocked = heightfield[i, j] > z
        result[idx[blocked]] = 0
        if k % 8 == 0:  # drop finished rays now and then; compaction costs more than a step
            keep = (result[idx] > 0) & (z < top)
            idx, start = idx[keep], start[keep]
    return result


def _lamp_states(scene: Scene, c: Condition, traversal: int) -> tuple[np.ndarray, np.ndarray]:
    """(L,) intensity and (L, 3) colour of each lamp in this traversal."""
    ids = scene.lamps.ident
    on = hash_uniform(ids, traversal, 301) < c.lamp_fraction
    sodium = hash_uniform(ids, traversal, 302) < 0.5
    colour = np.where(sodium[:, None], f32([1.0, 0.62, 0.28]), f32([0.85, 0.92, 1.0]))
    intensity = on * (28.0 + 24.0 * hash_uniform(ids, traversal, 303))
    return intensity.astype(np.float32), colour.astype(np.float32)


def radiance(gbuf: GBuffer, prims: Primitives, scene: Scene, c: Condition, traversal: int,
             heightfield: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(H, W, 3) linear radiance of one view."""
    height, width = gbuf.depth.shape
    out = np.zeros((height, width, 3), np.float32)
    hit = gbuf.prim >= 0
    sky = ~hit
    out[sky] = sky_colour(gbuf.view_dir[sky], c, scene.seed)
    # Pixels sorted by material, so each material works on contiguous slices.
    pix = np.flatnonzero(hit.ravel())
    material = prims.material[gbuf.prim.ravel()[pix]]
    order = np.argsort(material, kind="stable")
    pix, material = pix[order], material[order]
    prim = gbuf.prim.ravel()[pix]
    point = gbuf.point.reshape(-1, 3)[pix]
    normal = gbuf.normal.reshape(-1, 3)[pix]
    view = gbuf.view_dir.reshape(-1, 3)[pix]
    cosine = np.abs(np.einsum("nc,nc->n", normal, view))
    footprint = gbuf.footprint.ravel()[pix] / np.maximum(cosine, 0.15)
    params = prims.params[prim]
    lo, hi = prims.lo32[prim], prims.hi32[prim]
    albedo = np.zeros((len(pix), 3), np.float32)
    emission = np.zeros_like(albedo)
    gloss = np.zeros(len(pix), np.float32)
    kinds, starts = np.unique(material, return_index=True)
    for m, a, b in zip(kinds, starts, [*starts[1:], len(pix)]):
        part = slice(a, b)
        surface = Surface(point[part], normal[part], params[part], lo[part], hi[part], footprint[part], c, traversal)
        look = weather_overlay(surface, int(m), MATERIALS[int(m)](surface))
        albedo[part], emission[part], gloss[part] = look.albedo, look.emission, look.gloss

    # Sky light from the upper hemisphere, dimmed near the ground where the street occludes it.
    up = np.clip(normal[:, 2] * 0.5 + 0.5, 0, 1)[:, None]
    sky_light = (f32(c.sky_horizon) * (1 - up) * 0.7 + f32(c.sky_zenith) * up) * c.sky_intensity
    occlusion = 0.65 + 0.35 * np.clip(point[:, 2] / 3.0, 0, 1)
    light = sky_light * occlusion[:, None]
    if c.sun_intensity > 0:
        sun = sun_direction(c)
        shadow = (_sun_shadow(point, normal, c, heightfield, scene.heightfield_origin, scene.heightfield_cell)
                  if c.casts_shadows else 1.0)
        light = light + f32(c.sun_colour) * (c.sun_intensity * np.clip(normal @ sun, 0, 1) * shadow)[:, None]
    specular = np.zeros_like(albedo)
    if c.night:
        intensity, colour = _lamp_states(scene, c, traversal)
        near = np.flatnonzero((intensity > 0) & (np.linalg.norm(scene.lamps.position - centre, axis=1) < LAMP_RANGE))
        for lamp in near:
            to_lamp = scene.lamps.position[lamp] - point
            dist2 = np.einsum("nc,nc->n", to_lamp, to_lamp)
            direction = to_lamp / np.sqrt(dist2)[:, None]
            cone = 0.15 + 0.85 * np.clip(direction[:, 2], 0, 1) ** 0.6
            diffuse = np.clip(np.einsum("nc,nc->n", normal, direction), 0, 1)
            falloff = intensity[lamp] * cone / (dist2 + 1.0)
            light = light + colour[lamp] * (falloff * diffuse)[:, None]
            half = direction - view
            half /= np.linalg.norm(half, axis=1, keepdims=True)
            lobe = np.clip(np.einsum("nc,nc->n", normal, half), 0, 1) ** 80
            specular += colour[lamp] * (gloss * falloff * lobe * 6.0)[:, None]
    # Glossy surfaces mirror the sky.
    glossy = gloss > 0.1
    reflected = view[glossy] - 2 * np.einsum("nc,nc->n", view[glossy], normal[glossy])[:, None] * normal[glossy]
    fresnel = 0.04 + 0.96 * (1 - cosine[glossy]) ** 5
    specular[glossy] += sky_colour(reflected, c, scene.seed, octaves=2) * (gloss[glossy] * fresnel)[:, None]
    colour_ = albedo * light + emission + specular
    if c.fog > 0:
        transmit = np.exp(-c.fog * gbuf.depth.ravel()[pix])[:, None]
        fog = f32(c.fog_colour) * max(c.sky_intensity, 0.05)
        colour_ = colour_ * transmit + fog * (1 - transmit)
    out.reshape(-1, 3)[pix] = colour_
    return out


def _precipitation(image: np.ndarray, c: Condition, rng: np.random.Generator, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    layer = np.zeros((height, width), np.float32)
    if c.precipitation == "rain":
        n = int(700 * scale * scale)
        length = rng.uniform(8, 22, n) * scale
        x0, y0 = rng.uniform(0, width, n), rng.uniform(-20, height, n)
        slope = rng.normal(0.12, 0.03)
        for t in np.linspace(0, 1, int(22 * scale) + 2):
            xs = np.clip((x0 + slope * t * length).astype(int), 0, width - 1)
            ys = np.clip((y0 + t * length).astype(int), 0, height - 1)
            np.add.at(layer, (ys, xs), 0.05)
        layer = gaussian_filter(layer, 0.6)
    elif c.precipitation == "snow":
        n = int(900 * scale * scale)
        xs, ys = rng.integers(0, width, n), rng.integers(0, height, n)
        np.add.at(layer, (ys, xs), rng.uniform(1.5, 6.0, n))
        layer = gaussian_filter(layer, 0.9 * scale)
    level = np.percentile(image, 60) if c.precipitation == "rain" else 0.35
    return image + layer[..., None] * max(level, 0.02)


def expose(linear: np.ndarray, c: Condition, seed: int) -> np.ndarray:
    """The sensor: (H, W, 3) linear radiance to (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    height, width = linear.shape[:2]
    scale = width / 512.0
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    mean = float(np.mean(np.minimum(luminance, np.percentile(luminance, 98))))
    gain = float(np.clip(c.exposure / max(mean, 1e-6), 0.2, c.max_gain))
    image = linear * gain * f32(c.white_balance)
    if c.motion_blur > 0:
        size = max(round(c.motion_blur * scale), 1)
        if size > 1:
            image = uniform_filter1d(image, size, axis=1)
    bright = np.clip(image - 1.5, 0, None)  # glare around lamps and lit windows
    if c.night and bright.any():
        image = image + gaussian_filter(bright, (4 * scale, 4 * scale, 0)) * 0.6
    image = _precipitation(image, c, rng, scale)
    sigma = np.sqrt(c.shot_noise * np.clip(image, 0, None) * gain + (c.read_noise * gain) ** 2) * 0.5
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * sigma
    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((xx - width / 2) ** 2 + (yy - height / 2) ** 2) / (width * width / 4)
    image = image * (1 - 0.22 * r2)[..., None]
    image = np.clip(image, 0, None)
    mapped = image * (1 + image / 4.0) / (1 + image)
    return _GAMMA[(np.clip(mapped, 0, 1) * (len(_GAMMA) - 1)).astype(np.int32)]


_GAMMA = (np.linspace(0, 1, 4096) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)  # display gamma, as a table
