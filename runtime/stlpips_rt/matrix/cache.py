"""Features cached on disk, so a second run over the same images skips the backbone.

Where: the user's cache folder (``platformdirs.user_cache_dir("stlpips-deploy")/features``, e.g.
``~/.cache/stlpips-deploy/features`` on Linux), or ``$STLPIPS_CACHE_DIR``, or a folder the caller names; never
beside the images unless asked.

What an entry is keyed by (:func:`entry_key`, the one place that builds the key): the features graph's sha256, the
image file's content (sha256 of its bytes: a renamed or copied file hits, a changed one misses), the image options
that change features (resize, float range) and the engine that computed them (provider and engine version: features
differ in their last bits across engines). One ``{key}.npz`` per image.

How big: at most ``limit`` bytes (default :data:`DEFAULT_LIMIT`); past it, the least recently used entries go
(a hit refreshes an entry's modification time, which orders them). Entries are written under a temporary name and
renamed, so processes may share a folder; a damaged entry is ignored and rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..io.manifest import content_sha256

#: Default size limit of the cache: 2 GiB (about 690 alex-st feature rows of a 120x160 image, 3.1 MB each;
#: 3,400 of 64x64; 199 of 256x256).
DEFAULT_LIMIT = 2 * 2**30
CACHE_ENV = "STLPIPS_CACHE_DIR"
#: After eviction the cache holds at most this share of its limit, so one new entry does not evict at every put.
_LOW_WATER = 0.9
_ENTRY = re.compile(r"^[0-9a-f]{64}\.npz$")
_TAG = "CACHEDIR.TAG"  # https://bford.info/cachedir/: backup tools skip the folder
_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
             "# stlpips-deploy's feature cache (stlpips-score --matrix); delete it at will.\n")


def default_cache_dir() -> Path:
    """``$STLPIPS_CACHE_DIR``, else the user's cache folder for stlpips-deploy plus ``features``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("stlpips-deploy", appauthor=False)) / "features"


def entry_key(model_sha256: str, content: str, options: Mapping[str, object], engine: str) -> str:
    """The cache key of one image's features: a sha256 over the features graph's sha256, the image file's content
    sha256, the image options that change features (``{"resize": ..., "float_range": ...}``) and the engine
    (``"cpu onnxruntime 1.31.1"``). Any of them differing gives another key."""
    described = ";".join(f"{name}={options[name]!r}" for name in sorted(options))
    text = f"stlpips-features/1|model={model_sha256}|content={content}|{described}|engine={engine}"
    return hashlib.sha256(text.encode()).hexdigest()


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class FeatureCache:
    """One cache folder, read and written for one features graph, image options and engine.

    ``paths`` maps an image's name to its file (set by the caller for names that are not paths themselves);
    only files are cached (arrays have no content to key by here)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, limit: int = DEFAULT_LIMIT) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else default_cache_dir()
        if limit < 0:
            raise ValueError(f"cache limit must be >= 0 bytes, got {limit}")
        self.limit = int(limit)
        self.model_sha256 = ""
        self.options: dict[str, object] = {}
        self.engine = ""
        self.paths: dict[str, Path] = {}
        self.hits = 0
        self.evicted = 0
        self._sizes: dict[Path, int] | None = None  # entry -> bytes, read once on first use
        self._keys: dict[str, Path] = {}  # name -> its entry, so a miss hashes the file once

    def bind(self, model_sha256: str, options: Mapping[str, object], engine: str) -> FeatureCache:
        """Set what the entries of this run are computed with (the scorer calls this)."""
        self.model_sha256, self.options, self.engine = model_sha256, dict(options), engine
        self._keys = {}
        return self

    # --- size and eviction -------------------------------------------------------------------------------
    def _entries(self) -> dict[Path, int]:
        if self._sizes is None:
            self._sizes = {}
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.folder):
                    if _ENTRY.match(entry.name):
                        with contextlib.suppress(FileNotFoundError):
                            self._sizes[Path(entry.path)] = entry.stat().st_size
        return self._sizes

    @property
    def size(self) -> int:
        """Bytes the cache's entries take on disk."""
        return sum(self._entries().values())

    def __len__(self) -> int:
        return len(self._entries())

    def describe(self) -> str:
        """``~/.cache/stlpips-deploy/features: 34.5 MiB of 2.0 GiB``."""
        return f"{self.folder}: {format_bytes(self.size)} of {format_bytes(self.limit)}"

    def _evict(self, keep: Path | None = None) -> None:
        sizes = self._entries()
        total = sum(sizes.values())
        if total <= self.limit:
            return
        def last_use(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except FileNotFoundError:
                return -1.0
        for entry in sorted(sizes, key=last_use):
            if total <= self.limit * _LOW_WATER:
                break
            if entry == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            total -= sizes.pop(entry)
            self.evicted += 1

    def clear(self) -> int:
        """Remove every entry (only this cache's own files); returns the number removed."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder):
                if _ENTRY.match(entry.name) or entry.name.endswith(".tmp.npz"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        self._sizes = {}
        return removed

    # --- entries -------------------------------------------------------------------------------------------
    def _entry(self, name: str) -> Path | None:
        if name in self._keys:
            return self._keys[name]
        path = self.paths.get(name)
        if path is None:
            return None
        try:
            content = content_sha256(path)
        except OSError:
            return None
        entry = self.folder / f"{entry_key(self.model_sha256, content, self.options, self.engine)}.npz"
        self._keys[name] = entry
        return entry

    def key(self, name: str) -> str | None:
        """The entry ``name`` would be stored under (its content, model, options and engine), or None for an image
        that is not a file: two names with one key are the same features."""
        entry = self._entry(name)
        return None if entry is None else entry.stem

    def get(self, name: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        entry = self._entry(name)
        if entry is None or not entry.is_file():
            return None
        try:
            with np.load(entry) as saved:
                row, hw = saved["row"], saved["hw"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        with contextlib.suppress(OSError):
            now = time.time()
            os.utime(entry, (now, now))  # used now: the last to be evicted
        self.hits += 1
        return row.astype(np.float32, copy=False), (int(hw[0]), int(hw[1]))

    def put(self, name: str, row: np.ndarray, hw: tuple[int, int]) -> None:
        entry = self._entry(name)
        if entry is None:
            return
        buffer = io.BytesIO()
        np.savez(buffer, row=row, hw=np.asarray(hw, dtype=np.int64))
        data = buffer.getvalue()
        if len(data) > self.limit:
            return  # an entry that alone would take the cache over its limit is not written
        self.folder.mkdir(parents=True, exist_ok=True)
        tag = self.folder / _TAG
        if not tag.exists():
            with contextlib.suppress(OSError):
                tag.write_text(_TAG_TEXT)
        tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.tmp.npz")
        tmp.write_bytes(data)
        os.replace(tmp, entry)
        sizes = self._entries()
        sizes[entry] = entry.stat().st_size
        self._evict(keep=entry)
