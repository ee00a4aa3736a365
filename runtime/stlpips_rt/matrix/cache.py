"""Features cached on disk, so a second run over the same folder skips the backbone.

``{folder}/{features graph sha256[:16]}/{key}.npz`` per image, the key a sha256 of the file's resolved path, size,
modification time (ns) and the image options (resize, float range): a changed, touched or replaced file, another
model or other options miss the cache. Entries are written under a temporary name and renamed; a damaged entry
is ignored (and rewritten).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_FOLDER = ".stlpips-features"


class FeatureCache:
    def __init__(self, folder: str | os.PathLike[str], model_sha256: str, options_key: str = "") -> None:
        self.folder = Path(folder) / model_sha256[:16]
        self.options_key = options_key
        self.hits = 0
        self.paths: dict[str, Path] = {}  # name -> file, for names that are not paths themselves

    def _entry(self, name: str) -> Path | None:
        path = self.paths.get(name, Path(name))
        try:
            st = path.stat()
        except OSError:
            return None
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.options_key}"
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"

    def get(self, name: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        entry = self._entry(name)
        if entry is None or not entry.is_file():
            return None
        try:
            with np.load(entry) as saved:
                row, hw = saved["row"], saved["hw"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        self.hits += 1
        return row.astype(np.float32, copy=False), (int(hw[0]), int(hw[1]))

    def put(self, name: str, row: np.ndarray, hw: tuple[int, int]) -> None:
        entry = self._entry(name)
        if entry is None:
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, row=row, hw=np.asarray(hw, dtype=np.int64))
        os.replace(tmp, entry)
