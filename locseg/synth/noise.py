"""World-anchored procedural noise for SynthSeasons textures.

Every texture in a SynthSeasons street is a function of *world* coordinates (metres)
and a seed, never of image coordinates, so a surface point looks the same from every
camera and in every condition, and no two places along the street share a texture.

The noise is integer-lattice value noise: a 64-bit integer hash of the lattice cell
gives a value in [0, 1), interpolated with a smoothstep. ``fbm`` sums octaves and
fades out the ones finer than the pixel footprint, which keeps distant surfaces from
aliasing into salt-and-pepper.

All functions take float arrays of any (matching) shape and return float32 arrays of
that shape.
"""

from __future__ import annotations

import zlib

import numpy as np


def f32(values) -> np.ndarray:
    """A float32 array, so that constants do not promote float32 images to float64."""
    return np.asarray(values, np.float32)


_TABLE_BITS = 22
_TABLE = np.random.default_rng(0x5EA5).random(1 << _TABLE_BITS, dtype=np.float32)
_PRIMES = (73856093, 19349663, 83492791, 2654435761, 1597334677, 3812015801, 1103515245)


def hash_uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Hash integer keys to uniform floats in [0, 1).

    A spatial hash (xor of the keys times large primes) indexes a fixed table of
    random values; it is cheap and shows no lattice pattern.

    Args:
        keys: up to seven integer arrays (or scalars) of broadcastable shapes.
    Returns:
        float32 array of the broadcast shape.
    """
    if len(keys) > len(_PRIMES):
        raise ValueError(f"hash_uniform takes at most {len(_PRIMES)} keys, got {len(keys)}")
    with np.errstate(over="ignore"):
        h = np.int64(0x2545F491)
        for key, prime in zip(keys, _PRIMES):
            h = (h ^ (np.asarray(key).astype(np.int64) * np.int64(prime))) * np.int64(0x5851F42D)
        h = h ^ (h >> np.int64(29))
    return _TABLE[h & ((1 << _TABLE_BITS) - 1)]


def text_seed(text: str) -> int:
    """A 31-bit seed from a string, the same in every process and Python version."""
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def value_noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1) with unit lattice spacing."""
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = (u - iu).astype(np.float32), (v - iv).astype(np.float32)
    su = fu * fu * (3 - 2 * fu)
    sv = fv * fv * (3 - 2 * fv)
    with np.errstate(over="ignore"):
        # The corner hashes share their products: (i + 1) * P = i * P + P.
        a = iu.astype(np.int64) * np.int64(_PRIMES[0])
        b = iv.astype(np.int64) * np.int64(_PRIMES[1])
        a1, b1 = a + np.int64(_PRIMES[0]), b + np.int64(_PRIMES[1])
        s = np.int64((seed * _PRIMES[2]) % (1 << 62))
        n00, n10, n01, n11 = (_mix(x ^ y ^ s) for x, y in ((a, b), (a1, b), (a, b1), (a1, b1)))
    top = n00 + (n10 - n00) * su
    bottom = n01 + (n11 - n01) * su
    return top + (bottom - top) * sv


def _mix(h: np.ndarray) -> np.ndarray:
    h = h * np.int64(0x5851F42D)
    return _TABLE[(h ^ (h >> np.int64(29))) & ((1 << _TABLE_BITS) - 1)]


def fbm(
    u: np.ndarray,
    v: np.ndarray,
    seed: int,
    scale: float,
    octaves: int = 4,
    footprint: np.ndarray | float | None = None,
) -> np.ndarray:
    """Fractal sum of value noise, centred on 0 with amplitude about 0.5.

    Args:
        u, v: world-plane coordinates in metres.
        seed: decorrelates textures of different surfaces.
        scale: wavelength of the coarsest octave, metres.
        octaves: number of octaves, each half the wavelength of the previous.
        footprint: size of a pixel on the surface, metres; octaves whose wavelength
            is below two footprints fade out.
    """
    total = np.zeros(np.broadcast(u, v).shape, np.float32)
    amplitude, wavelength = 0.5, float(scale)
    for octave in range(octaves):
        layer = value_noise(u / wavelength, v / wavelength, seed * 131 + octave) - 0.5
        if footprint is not None:
            layer = layer * np.clip(wavelength / (2.0 * np.asarray(footprint)) - 1.0, 0.0, 1.0)
        total += amplitude * layer
        amplitude *= 0.55
        wavelength *= 0.5
    return total
