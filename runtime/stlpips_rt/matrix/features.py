"""Features of many images, computed once: one float32 row per image (every layer's unit-normalised features,
flattened and concatenated), in memory or spilled to disk (``np.memmap``), saved and loaded as a folder::

    features.json      header: format, the features graph's sha256 and the model's short name, image size,
                       layer shapes, image names
    features.npy       float32 [N, D] (np.load(..., mmap_mode="r") reads it without loading it)
    head_weights.npy   float32 [sum C_l]: the head's channel weights

Features of another model (another sha256) are refused with :class:`FeaturesMismatchError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StlpipsError

FORMAT = "stlpips-features/1"
HEADER = "features.json"
DATA = "features.npy"
WEIGHTS = "head_weights.npy"


class FeaturesMismatchError(StlpipsError):
    """Features that cannot be compared: of another model, another image size, or a damaged folder."""


@dataclass(frozen=True)
class FeatureLayout:
    """Where each layer sits in an image's row: ``channels[l]`` x ``shapes[l]`` (H_l, W_l), layer after layer."""

    channels: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(c * h * w for c, (h, w) in zip(self.channels, self.shapes, strict=True))

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    @property
    def bytes_per_image(self) -> int:
        return 4 * self.dim

    def weight_vector(self, weights: Sequence[np.ndarray]) -> np.ndarray:
        """float64 ``[D]``: ``w_{l,c} / (H_l W_l)`` at every element of layer l, channel c."""
        parts = [np.repeat(np.asarray(w, dtype=np.float64) / (h * w_), h * w_)
                 for w, (h, w_) in zip(weights, self.shapes, strict=True)]
        return np.concatenate(parts)

    def to_json(self) -> dict:
        return {"channels": list(self.channels), "layer_hw": [list(s) for s in self.shapes]}


class FeatureSet:
    """Features of ``len(names)`` images of one size: ``data`` float32 ``[N, D]`` (an array or a memmap),
    comparable with any other FeatureSet of the same ``model_sha256``. Build one with ``Scorer.features``."""

    def __init__(self, data: np.ndarray, names: Sequence[str], image_hw: tuple[int, int], layout: FeatureLayout,
                 head_weights: Sequence[np.ndarray], model_sha256: str, model_name: str,
                 spill_path: Path | None = None) -> None:
        if data.ndim != 2 or data.shape != (len(names), layout.dim):
            raise FeaturesMismatchError(f"features of shape {data.shape} for {len(names)} images of {layout.dim} "
                                        "values each")
        self.data = data
        self.names = list(names)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.layout = layout
        self.head_weights = tuple(np.asarray(w, dtype=np.float32) for w in head_weights)
        self.model_sha256 = model_sha256
        self.model_name = model_name
        self.spill_path = spill_path  # the memmap's file when spilled: removed when this object goes
        if spill_path is not None:
            weakref.finalize(self, _remove, spill_path)
        self._weights: np.ndarray | None = None
        self.failed: list = []  # extract.Failure of images left out (Scorer.features(skip_errors=True))
        self.report = None  # extract.ExtractReport of the run that computed them

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        where = f", spilled to {self.spill_path}" if self.spill_path else ""
        return (f"FeatureSet({len(self)} images of {self.image_hw[0]}x{self.image_hw[1]}, model {self.model_name} "
                f"{self.model_sha256[:12]}, {self.layout.bytes_per_image:,} bytes each{where})")

    @property
    def weights(self) -> np.ndarray:
        """The head's float64 weight per element (:meth:`FeatureLayout.weight_vector`)."""
        if self._weights is None:
            self._weights = self.layout.weight_vector(self.head_weights)
        return self._weights

    @property
    def nbytes(self) -> int:
        return len(self) * self.layout.bytes_per_image

    def layers(self, index: int) -> list[np.ndarray]:
        """Image ``index``'s features per layer, ``[C_l, H_l, W_l]`` each."""
        row, out, start = np.asarray(self.data[index]), [], 0
        for c, (h, w), size in zip(self.layout.channels, self.layout.shapes, self.layout.sizes, strict=True):
            out.append(row[start:start + size].reshape(c, h, w))
            start += size
        return out

    def check_comparable(self, other: FeatureSet, what: str = "features") -> None:
        """Raise :class:`FeaturesMismatchError` unless ``other`` comes from the same model and image size."""
        if other.model_sha256 != self.model_sha256:
            raise FeaturesMismatchError(
                f"{what}: computed with another model ({other.model_name}, features graph sha256 "
                f"{other.model_sha256[:12]}...) than these ({self.model_name}, {self.model_sha256[:12]}...); compute "
                "both with one model")
        if other.image_hw != self.image_hw or other.layout != self.layout:
            raise FeaturesMismatchError(
                f"{what}: images of {other.image_hw[0]}x{other.image_hw[1]} cannot be compared with images of "
                f"{self.image_hw[0]}x{self.image_hw[1]}; resize both to one size (ImageOptions(resize=...), --resize)")

    def check_model(self, sha256: str, name: str, what: str = "features") -> None:
        if self.model_sha256 != sha256:
            raise FeaturesMismatchError(
                f"{what}: saved with model {self.model_name} (features graph sha256 {self.model_sha256[:12]}...), "
                f"but this scorer runs {name} ({sha256[:12]}...); recompute them with this model, or load the model "
                "they were computed with")

    # --- saving and loading -----------------------------------------------------------------------------
    def header(self) -> dict:
        return {"format": FORMAT, "model_sha256": self.model_sha256, "model": self.model_name,
                "image_hw": list(self.image_hw), **self.layout.to_json(), "count": len(self),
                "dim": self.layout.dim, "names": self.names}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the folder (features.json, features.npy, head_weights.npy); the header last, so a folder with a
        header is complete."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / HEADER).unlink(missing_ok=True)
        target = np.lib.format.open_memmap(folder / DATA, mode="w+", dtype=np.float32, shape=self.data.shape)
        for start in range(0, len(self), 256):
            target[start:start + 256] = self.data[start:start + 256]
        target.flush()
        del target
        np.save(folder / WEIGHTS, np.concatenate(self.head_weights).astype(np.float32))
        _write_json(folder / HEADER, self.header())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], mmap: bool = True) -> FeatureSet:
        """Read a saved folder (memory-mapped unless ``mmap=False``)."""
        folder = Path(folder)
        try:
            header = json.loads((folder / HEADER).read_text())
        except FileNotFoundError:
            raise FeaturesMismatchError(f"{folder}: no {HEADER}; not a saved features folder (Scorer.features(...)"
                                        ".save(folder) writes one)") from None
        except (OSError, ValueError) as exc:
            raise FeaturesMismatchError(f"{folder}/{HEADER}: unreadable ({exc})") from None
        if header.get("format") != FORMAT:
            raise FeaturesMismatchError(f"{folder}: format {header.get('format')!r}, this runtime reads {FORMAT}")
        try:
            data = np.load(folder / DATA, mmap_mode="r" if mmap else None)
            flat = np.load(folder / WEIGHTS)
        except (OSError, ValueError) as exc:
            raise FeaturesMismatchError(f"{folder}: damaged ({exc})") from None
        layout = FeatureLayout(tuple(header["channels"]), tuple(tuple(s) for s in header["layer_hw"]))
        splits = np.cumsum(layout.channels)[:-1]
        return cls(data, header["names"], tuple(header["image_hw"]), layout, np.split(flat, splits),
                   header["model_sha256"], header["model"])

    @classmethod
    def concat(cls, parts: Sequence[FeatureSet]) -> FeatureSet:
        """One FeatureSet of several (same model and size), in memory."""
        first = parts[0]
        for other in parts[1:]:
            first.check_comparable(other)
        data = np.concatenate([np.asarray(p.data) for p in parts]) if parts else first.data
        return cls(data, [n for p in parts for n in p.names], first.image_hw, first.layout, first.head_weights,
                   first.model_sha256, first.model_name)


def spill_file(directory: str | os.PathLike[str] | None, rows: int, dim: int) -> tuple[np.ndarray, Path]:
    """A float32 ``[rows, dim]`` memmap in a new file under ``directory`` (default: the system's temp folder)."""
    fd, name = tempfile.mkstemp(prefix="stlpips-features-", suffix=".npy", dir=directory)
    os.close(fd)
    data = np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=(rows, dim))
    return data, Path(name)


#: madvise(2) advice to fault a mapping's pages in now, writable (Linux 5.14; Python's mmap module names it from 3.13)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _mapped_block(nbytes: int) -> mmap.mmap:
    """Fresh anonymous memory of ``nbytes``, returned at once while a background thread maps its pages
    (``MADV_POPULATE_WRITE``, which never changes what a page holds, so rows written meanwhile keep their values;
    on an older kernel the pages are touched in order here, before any row is written).

    Measured for 256 64x64 alex-st images (162 MB): rows written into fresh pages fault them in one by one (220-390
    ms of kernel time against 20-60 ms mapped in one call, 2-core AMD EPYC, load average 19). Mapping them in one
    call before the first run left the cores idle meanwhile, and asking for huge pages made that call compact
    memory: 13 ms in a fresh process, 250-330 ms right after a ``score_batch`` (2-core Zen 4, quiet). Small pages
    take 51 ms either way, and in the background the runs start at once: features after ``score_batch`` went from
    230-314 to 347-395 images/s."""
    block = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        block.madvise(_MADV_POPULATE_WRITE, 0, mmap.PAGESIZE)  # the kernel has it: map the rest in the background
    except (OSError, AttributeError):  # an older kernel: touch the pages in order instead, before any row is written
        np.frombuffer(block, dtype=np.uint8).fill(0)
        return block
    address = ctypes.addressof(ctypes.c_char.from_buffer(block))
    threading.Thread(target=_populate, args=(block, address, nbytes), name="stlpips-rows", daemon=True).start()
    return block


def _rows_of(block: mmap.mmap, rows: int, dim: int, finalize: tuple[object, ...]) -> np.ndarray:
    """A float32 ``[rows, dim]`` array over the start of ``block``. Its memory is a ctypes view of the block, the
    one object every numpy view of the rows keeps alive: ``finalize`` ``(fn, *args)`` runs when the last is gone."""
    holder = (ctypes.c_char * (rows * dim * 4)).from_buffer(block)
    weakref.finalize(holder, *finalize)
    return np.frombuffer(holder, dtype=np.float32).reshape(rows, dim)


class RowsPool:
    """Rows of features in memory that come back when dropped: the memory of a FeatureSet (and of every view of its
    rows) that is gone serves the next call; fresh memory is mapped in the background (:func:`_mapped_block`).

    Fresh memory is zeroed by the kernel, page by page, on the cores the runs use: 51 ms for 256 64x64 alex-st
    images' 162 MB, about 4% of computing them on 2 cores (docs/matrix.md). A Scorer that computes features again
    (a service, a Ray actor per block, a benchmark's rounds) reuses the rows of one it no longer holds instead.
    Every row a call returns is written by that call, so what the memory held before never shows. One block is kept
    (the largest given back) for as long as the pool: the Scorer's features graph."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: mmap.mmap | None = None
        self.reused = 0  # calls served from memory given back

    def take(self, rows: int, dim: int) -> np.ndarray:
        """A float32 ``[rows, dim]`` array: the kept block if it is large enough, else fresh memory."""
        nbytes = rows * dim * 4
        if nbytes == 0:
            return np.empty((rows, dim), dtype=np.float32)
        with self._lock:
            block = self._idle if self._idle is not None and len(self._idle) >= nbytes else None
            if block is not None:
                self._idle = None
                self.reused += 1
        if block is None:
            block = _mapped_block(nbytes)
        return _rows_of(block, rows, dim, (_give_back, weakref.ref(self), block))


def _give_back(pool_ref: weakref.ref, block: mmap.mmap) -> None:
    pool = pool_ref()
    if pool is not None:
        with pool._lock:
            if pool._idle is None or len(block) > len(pool._idle):
                pool._idle = block


def _populate(block: mmap.mmap, address: int, nbytes: int) -> None:
    """MADV_POPULATE_WRITE through libc: ctypes lets go of the GIL during the call, ``mmap.madvise`` does not (and
    would stop every Python thread while the kernel compacts). ``block`` is held so the mapping outlives the call."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise(address, nbytes, _MADV_POPULATE_WRITE)  # a failure leaves the pages to fault in on first write
    del block


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
