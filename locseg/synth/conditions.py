"""The capture conditions of SynthSeasons traversals.

A condition fixes the light (sun direction and colour, sky, street lamps and lit
windows at night), the state of the world (wet roads, snow cover, foliage colour,
leaves on the ground, falling rain or snow) and the sensor (exposure target and gain
limit, white balance, noise, motion blur), and how many cars are parked. The
reference traversal is recorded on an overcast summer day; queries are recorded in
the query conditions. A source condition is neither: it is a further traversal in
the reference's light, rendered by ``locseg synth-traversal`` as a second source of
cross-condition correspondences (``locseg.synth.traversal``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import lookup


@dataclass(frozen=True)
class Condition:
    """Parameters of one capture condition (colours are linear RGB)."""

    name: str
    sun_elevation: float = 35.0          # degrees above the horizon
    sun_azimuth: float = 40.0            # degrees from +x towards +y
    sun_intensity: float = 0.0           # direct sun, relative to sky light
    sun_colour: tuple = (1.0, 0.95, 0.88)
    sky_intensity: float = 1.0
    sky_zenith: tuple = (0.55, 0.62, 0.72)
    sky_horizon: tuple = (0.80, 0.82, 0.84)
    clouds: float = 0.6                  # cloud cover, 0..1
    night: bool = False                  # street lamps and windows light the scene
    lamp_fraction: float = 0.0           # fraction of street lamps that are on
    window_fraction: float = 0.0         # fraction of windows that are lit
    wet: float = 0.0                     # 0 dry .. 1 soaked: darker, glossier ground
    snow: float = 0.0                    # snow cover on upward-facing surfaces
    foliage: str = "summer"              # summer | autumn
    leaves_on_ground: float = 0.0
    precipitation: str = "none"          # none | rain | snow
    fog: float = 0.0                     # extinction per metre
    fog_colour: tuple = (0.7, 0.72, 0.75)
    exposure: float = 0.32               # target mean brightness before the tone curve
    max_gain: float = 4.0
    white_balance: tuple = (1.0, 1.0, 1.0)
    read_noise: float = 0.004
    shot_noise: float = 0.004
    motion_blur: float = 0.0             # horizontal blur length, pixels at 512 wide
    parked_cars: float = 1.0             # scales the chance that a spot holds a car (1: every query's)
    role: str = "query"                  # reference | query | source

    @property
    def casts_shadows(self) -> bool:
        """Whether the sun is strong enough to cast hard shadows."""
        return self.sun_intensity > 0.5


CONDITIONS: dict[str, Condition] = {c.name: c for c in [
    Condition("reference", sun_intensity=0.15, clouds=0.8, role="reference"),
    Condition("sun", sun_elevation=38, sun_azimuth=-55, sun_intensity=3.2, sky_zenith=(0.25, 0.42, 0.8),
              sky_horizon=(0.65, 0.75, 0.88), clouds=0.15, sky_intensity=0.8, exposure=0.36,
              white_balance=(1.04, 1.0, 0.95)),
    Condition("dusk", sun_elevation=4, sun_azimuth=170, sun_intensity=0.9, sun_colour=(1.0, 0.55, 0.25),
              sky_zenith=(0.18, 0.2, 0.38), sky_horizon=(0.95, 0.55, 0.32), sky_intensity=0.25, clouds=0.35,
              night=True, lamp_fraction=0.7, window_fraction=0.25, exposure=0.26, max_gain=8.0,
              read_noise=0.006, motion_blur=1.5),
    Condition("autumn", sun_elevation=18, sun_azimuth=120, sun_intensity=2.0, sun_colour=(1.0, 0.85, 0.65),
              sky_zenith=(0.35, 0.48, 0.75), sky_horizon=(0.85, 0.8, 0.72), clouds=0.35, foliage="autumn",
              leaves_on_ground=0.45, exposure=0.34, white_balance=(1.06, 1.0, 0.9)),
    Condition("snow", sun_intensity=0.1, sky_zenith=(0.75, 0.77, 0.8), sky_horizon=(0.9, 0.9, 0.92),
              clouds=1.0, snow=0.85, foliage="bare", precipitation="snow", fog=0.012,
              fog_colour=(0.85, 0.86, 0.9), exposure=0.42, white_balance=(0.94, 0.98, 1.08)),
    Condition("rain", sun_intensity=0.0, sky_intensity=0.55, sky_zenith=(0.45, 0.47, 0.5),
              sky_horizon=(0.6, 0.62, 0.64), clouds=1.0, wet=0.8, precipitation="rain", fog=0.008,
              fog_colour=(0.55, 0.57, 0.6), exposure=0.28, max_gain=6.0, motion_blur=1.0),
    Condition("night", sun_intensity=0.0, sky_intensity=0.012, sky_zenith=(0.02, 0.025, 0.05),
              sky_horizon=(0.08, 0.06, 0.06), clouds=0.5, night=True, lamp_fraction=0.85,
              window_fraction=0.3, exposure=0.07, max_gain=16.0, read_noise=0.012, shot_noise=0.014,
              motion_blur=3.0, white_balance=(1.0, 0.95, 0.9)),
    Condition("night-rain", sun_intensity=0.0, sky_intensity=0.01, sky_zenith=(0.02, 0.02, 0.03),
              sky_horizon=(0.07, 0.06, 0.06), clouds=1.0, night=True, lamp_fraction=0.75,
              window_fraction=0.22, wet=1.0, precipitation="rain", fog=0.015, fog_colour=(0.05, 0.045, 0.04),
              exposure=0.06, max_gain=16.0, read_noise=0.014, shot_noise=0.016, motion_blur=4.0),
    # The reference's light on a quiet morning: three in four parking spots are empty, so
    # the sidewalks that the reference's parked cars hide are in view.
    Condition("sunday", sun_intensity=0.15, clouds=0.8, parked_cars=0.3, role="source"),
]}

QUERY_CONDITIONS: tuple[str, ...] = tuple(name for name, c in CONDITIONS.items() if c.role == "query")
SOURCE_CONDITIONS: tuple[str, ...] = tuple(name for name, c in CONDITIONS.items() if c.role == "source")


def get_condition(name: str) -> Condition:
    """The condition called ``name``; raises RegistryError listing the valid names."""
    return lookup(CONDITIONS, "condition", name)
