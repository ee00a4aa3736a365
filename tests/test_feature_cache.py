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
    assert cache.key("a") == cache.key("b") is not None and cache.key("not a file") is None  # one entry, two names
    assert cache.get("a") is None and cache.hits == 0
    cache.put("a", _row(0), (8, 9))
    row, hw = cache.get("b")
    assert np.array_equal(row, _row(0)) and hw == (8, 9) and cache.hits == 1
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


def _images(folder: Path, count: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        files[str(i)] = folder / f"{i}.png"
        files[str(i)].write_bytes(f"image {i}".encode())
    return files


def _entry_bytes(tmp_path: Path, n: int) -> int:
    """What one entry of an ``n``-float row takes on disk, measured through a cache of its own."""
    image = tmp_path / "measure.png"
    image.write_bytes(b"measure")
    cache = _cache(tmp_path / "measure", {"m": image})
    cache.put("m", _row(0, n), (1, 1))
    return cache.size


def test_the_cache_holds_its_limit_and_evicts_down_to_nine_tenths_oldest_first(tmp_path: Path) -> None:
    size = _entry_bytes(tmp_path, 10)
    files = _images(tmp_path / "images", 22)
    folder = tmp_path / "cache"
    cache = _cache(folder, files, limit=20 * size)
    base = os.stat(files["0"]).st_mtime - 1000

    def put(i: int) -> None:
        cache.put(str(i), _row(i, 10), (1, 1))
        os.utime(cache._entry(str(i)), (base + i, base + i))  # used in the order written, whatever the clock's grain

    def kept() -> list[int]:
        return sorted(i for i in range(22) if cache._entry(str(i)).exists())

    for i in range(20):
        put(i)
    assert len(cache) == 20 and cache.size == cache.limit and cache.evicted == 0  # exactly full: nothing goes
    put(20)  # one over: the three used longest ago go, down to 90% of the limit and no further
    assert kept() == list(range(3, 21)) and cache.size == 18 * size and cache.evicted == 3
    put(21)  # under the limit again: nothing goes
    assert kept() == list(range(3, 22)) and cache.evicted == 3
    assert _cache(folder, files).size == 19 * size  # what a fresh look at the folder finds


def test_the_entry_just_written_stays_though_it_alone_nearly_fills_the_cache(tmp_path: Path) -> None:
    """An entry rewritten over a damaged one, so large that everything else must go: the others go (one of them
    touched by a clock ahead of ours, as on a folder shared between hosts), the new one stays, within the limit."""
    small, big = _entry_bytes(tmp_path, 10), _entry_bytes(tmp_path, 2000)
    files = {**_images(tmp_path / "images", 2), "big": tmp_path / "big.png"}
    files["big"].write_bytes(b"a large image")
    folder = tmp_path / "cache"
    writer = _cache(folder, files)
    writer.put("big", _row(9, 2000), (1, 1))
    writer._entry("big").write_bytes(b"PK damaged")
    for name, age in (("0", -3600), ("1", 3600)):  # "0": a time ahead of this clock; "1": an hour ago
        writer.put(name, _row(int(name), 10), (1, 1))
        when = os.stat(writer._entry(name)).st_mtime - age
        os.utime(writer._entry(name), (when, when))
    cache = _cache(folder, files, limit=big + small // 2)
    assert len(cache) == 3 and cache.get("big") is None  # the damaged entry is a miss
    cache.put("big", _row(9, 2000), (1, 1))
    assert [p.name for p in folder.glob("*.npz")] == [cache._entry("big").name]
    assert cache.size == big <= cache.limit
    row, _ = _cache(folder, files).get("big")
    assert np.array_equal(row, _row(9, 2000))


def test_an_entry_over_the_limit_is_not_written_one_at_the_limit_is(tmp_path: Path) -> None:
    size = _entry_bytes(tmp_path, 100)
    files = _images(tmp_path / "images", 1)
    over = _cache(tmp_path / "over", files, limit=size - 1)
    over.put("0", _row(0, 100), (1, 1))
    assert not (tmp_path / "over").exists() and over.get("0") is None  # nothing written, not even the folder
    exact = _cache(tmp_path / "exact", files, limit=size)
    exact.put("0", _row(0, 100), (1, 1))
    assert exact.size == exact.limit and exact.get("0") is not None


def test_a_limit_of_zero_caches_nothing_and_a_negative_one_is_refused(tmp_path: Path) -> None:
    files = _images(tmp_path / "images", 1)
    nothing = _cache(tmp_path / "cache", files, limit=0)
    nothing.put("0", _row(0), (1, 1))
    assert nothing.get("0") is None and not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match=r"^cache limit must be >= 0 bytes, got -1$"):
        FeatureCache(tmp_path / "cache", limit=-1)


def test_the_folder_is_made_with_its_parents(tmp_path: Path) -> None:
    folder = tmp_path / "home" / ".cache" / "stlpips-deploy" / "features"  # a fresh user's default, say
    cache = _cache(folder, _images(tmp_path / "images", 1))
    cache.put("0", _row(0), (1, 1))
    assert len(_cache(folder, {})) == 1 and (folder / "CACHEDIR.TAG").is_file()


def test_an_image_that_cannot_be_read_is_simply_not_cached(tmp_path: Path) -> None:
    (tmp_path / "a folder").mkdir()
    cache = _cache(tmp_path / "cache", {"gone": tmp_path / "gone.png", "folder": tmp_path / "a folder"})
    for name in ("gone", "folder"):
        assert cache.get(name) is None
        cache.put(name, _row(0), (1, 1))  # the scorer reports the unreadable image itself
    assert not (tmp_path / "cache").exists() and cache.hits == 0


def test_an_entry_another_process_removed_meanwhile_counts_as_gone(tmp_path: Path) -> None:
    """Processes may share a folder: an entry this cache listed, removed by another process before this one
    evicts, is neither an error nor a reason to evict a live entry."""
    size = _entry_bytes(tmp_path, 10)
    files = _images(tmp_path / "images", 3)
    folder = tmp_path / "cache"
    cache = _cache(folder, files, limit=int(2.5 * size))
    for i in range(2):
        cache.put(str(i), _row(i, 10), (1, 1))
    assert len(cache) == 2
    os.unlink(cache._entry("0"))  # another process's eviction or --clear-cache
    cache.put("2", _row(2, 10), (1, 1))
    assert sorted(p.name for p in folder.glob("*.npz")) == sorted(cache._entry(n).name for n in ("1", "2"))
