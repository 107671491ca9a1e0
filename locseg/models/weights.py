"""Where model weights come from: bundled assets, local files, or a download cache.

A weight *source* is one string, resolved in this order:

1. a **URL** (``http://``, ``https://``, ``file://``): fetched once into the user
   cache (``$LOCSEG_CACHE``, else ``$XDG_CACHE_HOME/locseg/weights``, else
   ``~/.cache/locseg/weights``) and read from there afterwards, without network;
2. a **bundled name** such as ``"synthseasons-slim"``: a safetensors file in the
   assets directory (``$LOCSEG_ASSETS``, else the repository's ``assets/``),
   listed in the registry below with its sha256, which is checked on every use;
3. a **path** to an existing file: safetensors, or a PyTorch file (``.pth``,
   ``.pt``, ...) read with ``torch.load(..., weights_only=True)``.

Anything else fails with a :class:`~locseg.errors.RegistryError` that lists the
bundled names. Whichever the source, ``sha256=`` pins the expected digest of the
file: a download that does not match is never moved into the cache.

Safety: a PyTorch file is only ever read with ``weights_only=True``, which
refuses pickled objects other than tensors and plain containers, so an untrusted
checkpoint cannot run code. The format of a file is read from its first bytes,
not from its name.

Example::

    >>> state = load_state_dict("synthseasons-slim")            # doctest: +SKIP
    >>> state = load_state_dict("~/Downloads/vgg16-397923af.pth")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from locseg import __version__
from locseg.errors import ChecksumError, FormatError, InputError, RegistryError
from locseg.io._common import atomic_output, fsync_file

URL_SCHEMES = ("http", "https", "file")
# Keys under which training scripts commonly nest the state dict of the model.
WRAPPER_KEYS = ("state_dict", "model", "model_state")
# Suffixes that mark a string as a path (for the error message when it is missing).
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BundledWeights:
    """One entry of the bundled-weights registry.

    Attributes:
        name: the name users pass, e.g. ``"synthseasons-slim"``.
        filename: the safetensors file, relative to the assets directory.
        sha256: lowercase hexadecimal digest of that file.
        description: one line for ``--help`` and listings (recipe, training data).
        model: the model the weights belong to (e.g. ``"vgg16-slim"``).
        match_ratio: hypercolumns only: the ratio test that suits them in the localizer's
            matching, chosen on a validation street; None for the matching's default.
    """

    name: str
    filename: str
    sha256: str
    description: str
    model: str = ""
    match_ratio: float | None = None

    @property
    def path(self) -> Path:
        """Where the file is expected, in the current assets directory."""
        return assets_dir() / self.filename


# name -> entry, filled by register_bundled. Weights that locseg ships are
# registered next to the model they belong to, once their file is in assets/:
#   register_bundled("synthseasons-slim", "synthseasons-slim.safetensors", "<sha256>",
#                    "slim VGG-16 trained on SynthSeasons train streets", model="vgg16-slim")
_BUNDLED: dict[str, BundledWeights] = {}


# --------------------------------------------------------------------------- registry


def register_bundled(
    name: str,
    filename: str,
    sha256: str,
    description: str,
    model: str = "",
    *,
    match_ratio: float | None = None,
    replace: bool = False,
) -> BundledWeights:
    """Add a bundled weight file to the registry and return its entry.

    Raises:
        InputError: ``name`` is empty or already registered (unless ``replace``),
            ``filename`` is not a relative ``.safetensors`` path, ``sha256``
            is not 64 hexadecimal digits, or ``match_ratio`` is outside (0, 1].
    """
    if not name or "/" in name or "\\" in name or "://" in name:
        raise InputError(f"bundled weights name {name!r} must be non-empty, without '/' or '\\'")
    if name in _BUNDLED and not replace:
        raise InputError(f"bundled weights {name!r} are already registered ({_BUNDLED[name].filename})")
    relative = Path(filename)
    if relative.is_absolute() or ".." in relative.parts or relative.suffix != ".safetensors":
        raise InputError(
            f"bundled weights {name!r}: filename {filename!r} must be a relative path "
            "inside the assets directory ending in .safetensors"
        )
    if match_ratio is not None and not 0 < match_ratio <= 1:
        raise InputError(f"bundled weights {name!r}: match_ratio must be in (0, 1], got {match_ratio}")
    entry = BundledWeights(name, relative.as_posix(), _check_digest(sha256), description, model, match_ratio)
    _BUNDLED[name] = entry
    return entry


def bundled_names() -> list[str]:
    """The registered bundled names, sorted."""
    return sorted(_BUNDLED)


def bundled_weights(name: str) -> BundledWeights:
    """The registry entry of ``name``; RegistryError listing valid names if unknown."""
    try:
        return _BUNDLED[name]
    except KeyError:
        raise RegistryError("bundled weights", name, bundled_names()) from None


def assets_dir() -> Path:
    """The directory of bundled assets.

    ``$LOCSEG_ASSETS`` when set; else ``locseg/assets`` if a packaged install
    carries one; else the repository's top-level ``assets/`` (an editable or
    source checkout). The result need not exist.
    """
    override = os.environ.get("LOCSEG_ASSETS")
    if override:
        return Path(override).expanduser()
    package = Path(__file__).resolve().parent.parent  # .../locseg
    for candidate in (package / "assets", package.parent / "assets"):
        if candidate.is_dir():
            return candidate
    return package.parent / "assets"


def cache_dir() -> Path:
    """The download cache: ``$LOCSEG_CACHE``, else ``$XDG_CACHE_HOME/locseg/weights``
    (``~/.cache`` when ``XDG_CACHE_HOME`` is unset). The result need not exist."""
    override = os.environ.get("LOCSEG_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "locseg" / "weights"


# --------------------------------------------------------------------------- resolving


def resolve_weights(
    source: str | Path,
    *,
    sha256: str | None = None,
    cache: str | Path | None = None,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """The local file behind a weight source (see the module docstring for the order).

    Args:
        source: URL, bundled name, or path.
        sha256: expected digest of the file, checked whatever the source.
        cache: download cache directory (default :func:`cache_dir`); URLs only.
        timeout: seconds without data before a download is abandoned.
        progress: called as ``progress(bytes_done, bytes_total_or_None)`` while
            downloading, for the CLI to draw a bar; the library never prints.

    Raises:
        RegistryError: ``source`` is neither a URL, a bundled name nor a file.
        InputError: a path that does not exist, an unsupported URL scheme, a
            download that fails, or a registered file missing from the assets.
        ChecksumError: the file's sha256 differs from the expected one.
    """
    expected = _check_digest(sha256) if sha256 is not None else None
    text = os.fspath(source)
    if "://" in text:
        return download_to_cache(text, sha256=expected, cache=cache, timeout=timeout, progress=progress)
    if text in _BUNDLED:
        path = _bundled_file(_BUNDLED[text])
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            if path.exists():
                raise InputError(f"weights {text!r}: {path} is not a file")
            if _looks_like_path(text):
                raise InputError(f"weights file {path} does not exist")
            raise RegistryError("bundled weights", text, bundled_names())
    if expected is not None:
        verify_sha256(path, expected)
    return path


def load_state_dict(source: str | Path, **resolve_options) -> dict[str, torch.Tensor]:
    """Read the state dict of a weight source onto the CPU.

    Nested checkpoints such as ``{"state_dict": {...}, "epoch": 3}`` or
    ``{"model": {...}}`` are unwrapped (keys in :data:`WRAPPER_KEYS`); keys are
    returned as stored (no prefix such as ``module.`` is stripped).

    Args:
        source: as in :func:`resolve_weights`.
        **resolve_options: ``sha256``, ``cache``, ``timeout``, ``progress``.

    Returns:
        ``{parameter name: tensor}``; the key order is the file's, which for
        safetensors is not the order the tensors were saved in.

    Raises:
        FormatError: the file is neither safetensors nor a PyTorch file, is
            corrupt, holds pickled objects other than tensors and plain
            containers, or is not a flat mapping of names to tensors.
        and the errors of :func:`resolve_weights`.
    """
    path = resolve_weights(source, **resolve_options)
    kind = sniff_format(path)
    if kind == "safetensors":
        return _load_safetensors(path)
    return _as_state_dict(path, _torch_load(path))


def sniff_format(path: str | Path) -> str:
    """``"safetensors"`` or ``"torch"``, from the first bytes of the file.

    Raises:
        FormatError: the file is neither.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    if len(head) == 9 and head[8:9] == b"{" and 8 < int.from_bytes(head[:8], "little") + 8 <= size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # zip archive or legacy pickle
        return "torch"
    raise FormatError(
        path,
        "not a weights file: expected safetensors (8-byte header length, then '{') "
        "or a PyTorch file saved with torch.save (a zip archive)",
    )


# --------------------------------------------------------------------------- downloads


def cached_path(url: str, cache: str | Path | None = None) -> Path:
    """Where :func:`download_to_cache` keeps ``url``: ``<stem>-<url hash><suffix>``.

    The hash of the full URL keeps two files of the same name from different
    places apart; the readable stem and suffix keep the cache browsable.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "weights"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "weights"
    stem, suffix = os.path.splitext(name)
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return Path(cache if cache is not None else cache_dir()).expanduser() / f"{stem}-{key}{suffix}"


def download_to_cache(
    url: str,
    *,
    sha256: str | None = None,
    cache: str | Path | None = None,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Fetch ``url`` into the cache unless it is there already; return the cached file.

    The download goes to a temporary file next to its final place, is checked
    against ``sha256`` (if given) and against the announced length, flushed to
    disk, and only then renamed into place. A failed or mismatching download
    leaves nothing in the cache. A cached file is checked against ``sha256`` too.

    Raises:
        InputError: unsupported scheme, or the download fails.
        ChecksumError: the content does not have the expected digest.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise InputError(
            f"weights URL {url!r}: scheme {scheme!r} is not supported; use one of {', '.join(URL_SCHEMES)}"
        )
    expected = _check_digest(sha256) if sha256 is not None else None
    target = cached_path(url, cache)
    if target.is_file():
        if expected is not None:
            verify_sha256(target, expected, note=f"cached copy of {url}; delete it to download again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _copy_url(url, out, timeout, progress)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and actual != expected:
            raise ChecksumError(url, expected, actual, "the download was discarded")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _copy_url(url: str, out, timeout: float, progress) -> str:
    """Stream ``url`` into the open file ``out``; return the sha256 of what was read."""
    request = urllib.request.Request(url, headers={"User-Agent": f"locseg/{__version__}"})
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except urllib.error.HTTPError as err:
        raise InputError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise InputError(f"cannot download {url}: {reason}") from err
    if total is not None and done != total:
        raise InputError(f"cannot download {url}: got {done} bytes of {total} (connection cut)")
    return digest.hexdigest()


# --------------------------------------------------------------------------- digests


def file_sha256(path: str | Path) -> str:
    """Lowercase hexadecimal sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str, note: str = "") -> None:
    """Raise a ChecksumError unless the file has digest ``expected``."""
    actual = file_sha256(path)
    if actual != _check_digest(expected):
        raise ChecksumError(path, expected.lower(), actual, note)


def _check_digest(sha256: str) -> str:
    digest = str(sha256).strip().lower()
    if not _HEX64.fullmatch(digest):
        raise InputError(f"sha256 {sha256!r} is not 64 hexadecimal digits")
    return digest


# --------------------------------------------------------------------------- safetensors


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a state dict as safetensors, atomically, with string metadata in the header.

    Tensors are moved to the CPU and made contiguous; tensors sharing memory
    (tied weights) are stored as separate copies, as safetensors requires. The
    header's keys are written in sorted order, so the same tensors and metadata
    always give the same bytes (and sha256).

    Args:
        state_dict: ``{name: tensor}``.
        path: destination; parent directories are created.
        metadata: ``{key: value}``, both strings (e.g. ``backbone``, ``recipe``);
            JSON-encode structured values first.

    Raises:
        InputError: a key or value that is not a string / tensor.
    """
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise InputError(f"state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise InputError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages and tensor.numel() > 0:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    header = dict(metadata or {})
    for key, value in header.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError(f"safetensors metadata {key!r}: {value!r} must map strings to strings")
    with atomic_output(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=header or None)
        _sort_header(tmp)
        fsync_file(tmp)
    return Path(path)


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header in place with its keys sorted.

    The writer orders the header's keys (the metadata's among them) differently from
    one call to the next. The header is compact JSON padded with spaces to its
    recorded length, and tensor offsets count from the end of it, so the sorted JSON
    has the same length and the tensor bytes stay where they are.
    """
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        raw = f.read(length)
        header = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(header) > length:
            raise RuntimeError(f"{path}: the safetensors writer's header is not compact JSON ({length} bytes, "
                               f"{len(header)} once sorted); this safetensors version needs another way to sort it")
        f.seek(8)
        f.write(header.ljust(length, b" "))


def read_safetensors_metadata(source: str | Path, **resolve_options) -> dict[str, str]:
    """The string metadata stored in a safetensors header (``{}`` if none).

    Raises:
        FormatError: the file is not safetensors.
    """
    path = resolve_weights(source, **resolve_options)
    if sniff_format(path) != "safetensors":
        raise FormatError(path, "not a safetensors file; only safetensors files carry metadata")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except safetensors.SafetensorError as err:
        raise FormatError(path, f"corrupt safetensors file: {err}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except safetensors.SafetensorError as err:
        raise FormatError(path, f"corrupt safetensors file: {err}") from None


# --------------------------------------------------------------------------- torch files


def _torch_load(path: Path):
    """``torch.load`` with ``weights_only=True``, its failures turned into FormatErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise FormatError(
            path,
            f"refused: the file holds pickled Python objects that are not tensors or plain "
            f"containers{what}. locseg loads weights with torch.load(weights_only=True) and never "
            "unpickles arbitrary objects; in an environment you trust, load it and save its "
            "state dict alone (torch.save(state_dict) or locseg's save_safetensors)",
        ) from None
    except PermissionError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    except Exception as err:  # noqa: BLE001 - damaged files fail in many ways (even OSError on seek)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FormatError(path, f"corrupt or truncated PyTorch file: {first}") from None


def _as_state_dict(path: Path, obj) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``-style nesting and check the result is flat."""
    while isinstance(obj, Mapping) and not _is_flat(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise FormatError(path, f"expected a mapping of names to tensors, found a {type(obj).__name__}")
    bad = [repr(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise FormatError(
            path,
            f"not a state dict: {len(bad)} entries are not string -> tensor ({shown}); "
            f"nested state dicts are looked for under {', '.join(WRAPPER_KEYS)}",
        )
    return dict(obj)


def _is_flat(obj: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


# --------------------------------------------------------------------------- helpers


def _bundled_file(entry: BundledWeights) -> Path:
    path = entry.path
    if not path.is_file():
        raise InputError(
            f"bundled weights {entry.name!r}: {path} is missing; set LOCSEG_ASSETS to the "
            "directory that holds the bundled assets (the repository's assets/)"
        )
    verify_sha256(path, entry.sha256, note=f"bundled weights {entry.name!r} are damaged or out of date")
    return path


def _looks_like_path(text: str) -> bool:
    suffix = Path(text).suffix.lower()
    return os.sep in text or "/" in text or text.startswith("~") or suffix in WEIGHT_SUFFIXES


# --------------------------------------------------------------------------- shipped weights

register_bundled(
    "synthseasons-slim-dmcgn-interim", "synthseasons-slim-dmcgn-interim.safetensors",
    "992ed5c4dbef09aacc9f601c0825a07505757b7a4578654e5dacdf7c14adcb3d",
    "slim VGG-16 hypercolumns trained from scratch with DMC+GN on SynthSeasons train streets 0-2, "
    "2900 steps in four runs (interim; recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-vlad-interim", "synthseasons-slim-vlad-interim.safetensors",
    "53eec68e5235379f822c0a0436e29e137dc7c88fd6426385276488e3c69f5506",
    "NetVLAD head (64 clusters) over the hypercolumns of synthseasons-slim-dmcgn-interim, initialised by "
    "k-means on SynthSeasons train streets 0-4, no triplet training yet (interim; benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v2", "synthseasons-slim-dmcgn-v2.safetensors",
    "a5026716b6010005e25e9533da52ac5e84001d2a174bdc560291fa84cd628450",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-interim trained 3500 more DMC+GN steps on "
    "SynthSeasons train streets 0-4 (recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v3", "synthseasons-slim-dmcgn-v3.safetensors",
    "013407891c1421eb34047226bbe8937324d09bdb63bd8b903f394e4fac574b24",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v2 trained 3500 more DMC+GN steps on "
    "SynthSeasons train streets 0-4 (recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v4", "synthseasons-slim-dmcgn-v4.safetensors",
    "58a2f1ecb5228807da9918c79405c3d8b1cb0a6a7b3960005043b993bf81f53f",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v3 trained 2000 more steps on SynthSeasons train "
    "streets 0-4 with DMC+GN plus a dense cross-entropy term (weight 1), the rate falling along a cosine "
    "(recipe and test-street precision in benchmarks/RESULTS.md); the localizer defaults to v8",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v5", "synthseasons-slim-dmcgn-v5.safetensors",
    "6dddfd0d53ff4d892916b170ad236b9a77d9c169cdf48cd0a0aea44fddcbb4ae",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v4 trained a second cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term on SynthSeasons train streets 0-4 (recipe and test-street "
    "precision in benchmarks/RESULTS.md); the localizer defaults to v8",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v6", "synthseasons-slim-dmcgn-v6.safetensors",
    "de50ae22c5c3881f184610c722918ff6393b88067dd571b82bb0220388df0523",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v4 trained a second cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.025 on SynthSeasons train streets 0-4 (recipe "
    "and test-street precision in benchmarks/RESULTS.md); the localizer defaults to v8",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v7", "synthseasons-slim-dmcgn-v7.safetensors",
    "bccf8daf12251f50e6e667a9b8052cd58db48d27589a9ebe0b9e5513a3d055ec",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v6 trained a third cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.025 on SynthSeasons train streets 0-4 (recipe "
    "and test-street precision in benchmarks/RESULTS.md); the localizer defaults to v8",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v8", "synthseasons-slim-dmcgn-v8.safetensors",
    "981b5051210dc2b84bde287f9e3d2741ef043ac9bf9ecb6c5ef8fcad24c0133c",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v7 trained a fourth cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.0125 on SynthSeasons train streets 0-4 (recipe "
    "and test-street precision in benchmarks/RESULTS.md); the localizer's default",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v9", "synthseasons-slim-dmcgn-v9.safetensors",
    "7063cefaf15550aea94b36683a1822a9b09967ab07effd21e02ac4b69145d682",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v8 trained a fifth cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.0125 on 13 SynthSeasons train streets (0-4, "
    "6-13; recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-dmcgn-v10", "synthseasons-slim-dmcgn-v10.safetensors",
    "6ef6d96bfc40b8d71d60f42c5ca6c95b725003916a21cf11b4b9c5e5979fbb85",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v9 trained a sixth cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.00625 on 13 SynthSeasons train streets (0-4, "
    "6-13; recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim", match_ratio=1.0)   # street 5's choice of 0.9 / 0.95 / 1 (RESULTS, the ratio test)
register_bundled(
    "synthseasons-slim-dmcgn-v11", "synthseasons-slim-dmcgn-v11.safetensors",
    "e4bd9fefae209c41547c80313a26d3bb3768fc90d8299626e28e4928cf12a45f",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v10 trained a seventh cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.003125 on 13 SynthSeasons train streets (0-4, "
    "6-13; recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim", match_ratio=1.0)   # street 5 chose 1 with both heads trained on v11
register_bundled(
    "synthseasons-slim-dmcgn-v12", "synthseasons-slim-dmcgn-v12.safetensors",
    "67788579fa259491b68808262282f5a22199ac6d6e8d240635fd927969564f3f",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v11 trained an eighth cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.003125 on 26 SynthSeasons train streets (0-4, "
    "6-26; recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim", match_ratio=1.0)   # as v11: at 0.9 the ratio test keeps none of its matches (RESULTS)
register_bundled(
    "synthseasons-slim-dmcgn-v13", "synthseasons-slim-dmcgn-v13.safetensors",
    "22f6f8d78cab77c7d35040dc717445e6a16325fd70ab35ec341bcf5852212884",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v12 trained a ninth cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.003125 on the same 26 SynthSeasons train streets "
    "(recipe and test-street precision in benchmarks/RESULTS.md)",
    model="vgg16-slim", match_ratio=1.0)   # v12's sharpness and one more cycle at its temperature; not measured apart
register_bundled(
    "synthseasons-slim-dmcgn-v14", "synthseasons-slim-dmcgn-v14.safetensors",
    "3a784580c540266fee9101b9dba8eabe627063534febf156169a13b0ea49b9ac",
    "slim VGG-16 hypercolumns: synthseasons-slim-dmcgn-v13 trained a tenth cosine cycle of 2000 steps with "
    "DMC+GN and the dense cross-entropy term at temperature 0.003125 on 52 SynthSeasons train streets (0-4, "
    "6-52; recipe and test-street precision in benchmarks/RESULTS.md); the best hypercolumns",
    model="vgg16-slim", match_ratio=1.0)   # as v11-v13, whose sharpness it continues; not measured apart
register_bundled(
    "synthseasons-slim-vlad-v2", "synthseasons-slim-vlad-v2.safetensors",
    "d16f80ec8237af2f7d4ab616a42a42d1eb50fe22ab7c34853bc29ad440084789",
    "NetVLAD head (64 clusters) over the hypercolumns of synthseasons-slim-dmcgn-v2, k-means then 3000 "
    "triplet steps on cached features of SynthSeasons train streets 0-4 (benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-vlad-v3", "synthseasons-slim-vlad-v3.safetensors",
    "70fcee63a3ebf811f393ac5a9eb2939e1ad6a63d4564f1b45453afb8d28db19b",
    "NetVLAD head (64 clusters) over the hypercolumns of synthseasons-slim-dmcgn-v3, k-means then 3000 "
    "triplet steps on cached features of SynthSeasons train streets 0-4 (benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-vlad-v4", "synthseasons-slim-vlad-v4.safetensors",
    "9dd44021d243b47ba2e55e29d64d8ee5f521bcf6d1b2df22e525cc1718be7e05",
    "NetVLAD head (64 clusters) over the hypercolumns of synthseasons-slim-dmcgn-v3 with each level "
    "normalised, k-means then 3000 triplet steps on cached features of SynthSeasons train streets 0-4 "
    "(benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-vlad-v5", "synthseasons-slim-vlad-v5.safetensors",
    "13fb55ccd6982f3166ab1bafc37b29fe5b47a6746e3109fd3615b6a9fe8a5d20",
    "NetVLAD head (64 clusters) over the hypercolumns of synthseasons-slim-dmcgn-v8 with each level "
    "normalised, k-means then 3000 triplet steps on cached features of SynthSeasons train streets 0-4 "
    "(seed 1, chosen on street 5; benchmarks/RESULTS.md); the localizer's default",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-pspnet-v1", "synthseasons-slim-pspnet-v1.safetensors",
    "bf65550097a2450de440cedc91ce1235112e047338429833a3836b3948c83f55",
    "segmentation: PSP head on relu4_3 (stride 8) of synthseasons-slim-dmcgn-v3, fine-tuned with "
    "class-balanced cross-entropy on SynthSeasons train streets 0-2 at 512 px, 3000 steps (benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-pspnet-v2", "synthseasons-slim-pspnet-v2.safetensors",
    "0401f8c4f7c508a23f9bdd57aad3a92303fa75694ed9b60afa6374b4a7e81229",
    "segmentation: synthseasons-slim-pspnet-v1 continued for 1000 steps with CE on cross-condition "
    "correspondences (lambda 0.25) from SynthSeasons train streets 0-4 and 6-13, labels from streets 0-2 "
    "(benchmarks/RESULTS.md)",
    model="vgg16-slim")
register_bundled(
    "synthseasons-slim-pspnet-v3", "synthseasons-slim-pspnet-v3.safetensors",
    "012b5adcb844cd7ccd0c9d0ad896bc27b40c26ac125477b06293f261751617b7",
    "segmentation: a one-label-per-condition model (3000 steps on SynthSeasons train streets 0-2) continued "
    "3000 steps with CE (lambda 0.25) on the cross-condition correspondences of train streets 3, 4 and 6-13 "
    "(reference and sunday traversals, pairs on parked cars and on the sky), backbone at half the head's "
    "rate (benchmarks/RESULTS.md)",
    model="vgg16-slim")
