"""The --matrix feature cache (stlpips_rt.matrix.cache): its key, content addressing, its size limit with
least-recently-used eviction, clearing, and where it lives. No model needed: rows are made up here; the CLI's use
of the cache is in tests/test_matrix.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from stlpips_rt.matrix.cache import CACHE_ENV, DEFAULT_LIMIT, FeatureCache, default_cache_dir, entry_key

MODEL = "a" * 64
OPTIONS = {"resize": None, "float_range": None}
ENGINE = "cpu name=onnxruntime version=1.31.1"


def _cache(folder: Path, files: dict[str, Path], limit: int = DEFAULT_LIMIT) -> FeatureCache:
    cache = FeatureCache(folder, limit).bind(MODEL, OPTIONS, ENGINE)
    cache.paths = dict(files)
    return cache


def _row(seed: int, n: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).random(n, dtype=np.float32)


def test_the_key_changes_with_each_thing_that_changes_features() -> None:
    base = entry_key(MODEL, "c" * 64, OPTIONS, ENGINE)
    assert base == entry_key(MODEL, "c" * 64, dict(reversed(OPTIONS.items())), ENGINE)  # order does not matter
    others = [entry_key("b" * 64, "c" * 64, OPTIONS, ENGINE), entry_key(MODEL, "d" * 64, OPTIONS, ENGINE),
              entry_key(MODEL, "c" * 64, {**OPTIONS, "resize": 64}, ENGINE),
              entry_key(MODEL, "c" * 64, {**OPTIONS, "float_range": "0,1"}, ENGINE),
              entry_key(MODEL, "c" * 64, OPTIONS, "openvino name=onnxruntime version=1.31.1")]
    assert len({base, *others}) == 6


def test_entries_are_known_by_content_not_by_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"first image")
    b.write_bytes(b"first image")  # a copy under another name
    cache = _cache(tmp_path / "cache", {"a": a, "b": b})
    assert cache.get("a") is None
    cache.put("a", _row(0), (8, 9))
    row, hw = cache.get("b")
    assert np.array_equal(row, _row(0)) and hw == (8, 9)
    a.write_bytes(b"first image, changed")
    assert _cache(tmp_path / "cache", {"a": a}).get("a") is None  # a changed file misses
    other = FeatureCache(tmp_path / "cache").bind(MODEL, {**OPTIONS, "resize": 32}, ENGINE)
    other.paths = {"b": b}
    assert other.get("b") is None  # other options miss
    assert cache.get("not a file") is None  # arrays (no path) are not cached


def test_the_limit_evicts_the_least_recently_used(tmp_path: Path) -> None:
    files = {}
    for i in range(4):
        files[str(i)] = tmp_path / f"{i}.png"
        files[str(i)].write_bytes(f"image {i}".encode())
    folder = tmp_path / "cache"
    cache = _cache(folder, files)
    cache.put("0", _row(0), (1, 1))
    entry_size = cache.size
    cache = _cache(folder, files, limit=int(3.5 * entry_size))
    cache.put("1", _row(1), (1, 1))
    cache.put("2", _row(2), (1, 1))
    now = os.stat(cache._entry("2")).st_mtime
    for age, name in ((300, "0"), (200, "1"), (100, "2")):  # an order of use that needs no clock resolution
        os.utime(cache._entry(name), (now - age, now - age))
    assert cache.get("0") is not None  # "0", used longest ago, is used again: now the newest
    cache.put("3", _row(3), (1, 1))  # over 3.5 entries: evicts down to 90% of the limit, oldest first
    assert len(cache) == 3 and cache.evicted == 1 and cache.size <= cache.limit
    fresh = _cache(folder, files)
    assert fresh.get("0") is not None and fresh.get("3") is not None and fresh.get("2") is not None
    assert fresh.get("1") is None
    assert "of " in cache.describe() and str(folder) in cache.describe()


def test_clear_removes_only_the_caches_own_files(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    folder = tmp_path / "cache"
    cache = _cache(folder, {"a": image})
    cache.put("a", _row(0), (1, 1))
    (folder / "notes.txt").write_text("mine")
    assert (folder / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert cache.clear() == 1
    assert sorted(p.name for p in folder.iterdir()) == ["CACHEDIR.TAG", "notes.txt"]
    assert len(cache) == 0 and cache.get("a") is None


def test_default_folder_is_the_users_cache_or_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "stlpips-deploy" / "features"


def test_another_model_or_engine_misses_through_the_cache_itself(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"an image")
    folder = tmp_path / "cache"
    _cache(folder, {"a": image}).put("a", _row(0), (4, 4))
    for model, engine in ((MODEL, ENGINE), ("b" * 64, ENGINE), (MODEL, "openvino name=onnxruntime version=1.31.1")):
        cache = FeatureCache(folder).bind(model, OPTIONS, engine)
        cache.paths = {"a": image}
        assert (cache.get("a") is not None) == (model == MODEL and engine == ENGINE), (model, engine)
    assert len(FeatureCache(folder)) == 1  # one entry, read back only by the set-up that wrote it


def test_a_file_replaced_in_place_misses_though_its_name_size_and_time_are_the_same(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"image one")
    stat = image.stat()
    folder = tmp_path / "cache"
    _cache(folder, {"a": image}).put("a", _row(0), (4, 4))
    image.write_bytes(b"image two")  # the same length
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    assert _cache(folder, {"a": image}).get("a") is None


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "empty", "no hw"])
def test_a_damaged_entry_is_a_miss_and_is_written_again(tmp_path: Path, damage: str) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"an image")
    folder = tmp_path / "cache"
    cache = _cache(folder, {"a": image})
    cache.put("a", _row(0), (4, 4))
    entry = cache._entry("a")
    data = entry.read_bytes()
    if damage == "no hw":
        np.savez(entry.with_suffix(""), row=_row(0))  # np.savez adds .npz: the same file, a field missing
    else:
        entry.write_bytes({"truncated": data[: len(data) // 2], "not a zip": b"PK not really", "empty": b""}[damage])
    again = _cache(folder, {"a": image})
    assert again.get("a") is None and again.hits == 0
    again.put("a", _row(1), (5, 6))
    row, hw = _cache(folder, {"a": image}).get("a")
    assert np.array_equal(row, _row(1)) and hw == (5, 6)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["CACHEDIR.TAG", entry.name])  # no temporary left
