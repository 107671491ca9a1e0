"""locseg.io: the file formats locseg reads and writes.

- ``queries``: hloc query lists with intrinsics (``name MODEL WIDTH HEIGHT params...``).
- ``poses``: pose and results files (``name qw qx qy qz tx ty tz``, cam_from_world).
- ``correspondences``: Cross-Season Correspondence files (MATLAB v7.3 / HDF5).
- ``colmap``: COLMAP models through pycolmap, and building one from arrays.

Import the module you need; this package imports none of them, so reading a pose
file does not load pycolmap or h5py.
"""
