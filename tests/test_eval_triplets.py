"""The built-in triplet set: deterministic, real photographs, every distortion active."""

import numpy as np
import pytest

from stlpips_export.evaluate.triplets import DISTORTIONS, PHOTOS, load_photo, make_triplets


def test_same_seed_gives_byte_identical_triplets():
    a, b = make_triplets(6, 32, seed=3), make_triplets(6, 32, seed=3)
    for x, y in ((a.ref, b.ref), (a.d0, b.d0), (a.d1, b.d1)):
        assert np.array_equal(x, y)
    assert a.info == b.info


def test_a_larger_count_extends_the_set_without_changing_its_first_triplets():
    small, large = make_triplets(3, 32, seed=1), make_triplets(7, 32, seed=1)
    assert np.array_equal(small.d1, large.d1[:3]) and small.info == large.info[:3]


def test_different_seeds_give_different_triplets():
    assert not np.array_equal(make_triplets(4, 32, seed=0).ref, make_triplets(4, 32, seed=1).ref)


def test_triplets_are_uint8_rgb_of_the_requested_size_with_distinct_distortions():
    t = make_triplets(5, 48, seed=0)
    assert t.ref.shape == t.d0.shape == t.d1.shape == (5, 48, 48, 3) and t.ref.dtype == np.uint8
    assert len(t) == 5 and t.size == (48, 48) and t.judge is None
    assert all(not np.array_equal(t.ref[i], t.d0[i]) and not np.array_equal(t.ref[i], t.d1[i]) for i in range(5))
    assert all(" d0=" in text and " d1=" in text for text in t.info)


def test_every_bundled_photo_loads_as_rgb_without_a_download():
    for name in PHOTOS:
        photo = load_photo(name)
        assert photo.ndim == 3 and photo.shape[2] == 3 and photo.dtype == np.uint8 and min(photo.shape[:2]) >= 256


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_every_distortion_changes_the_image_more_at_higher_strength(name):
    ref = load_photo("astronaut")[100:164, 100:164].astype(np.float32) / 255

    def change(strength: float) -> float:
        out, label = DISTORTIONS[name](ref, strength, np.random.default_rng(0))
        assert out.shape == ref.shape and label.startswith(name)
        return float(np.abs(np.clip(out, 0, 1) - ref).mean())

    assert 0 < change(0.1) < change(0.9)


def test_bad_counts_and_sizes_are_refused():
    with pytest.raises(ValueError, match="count"):
        make_triplets(0, 64)
    with pytest.raises(ValueError, match="too small"):
        make_triplets(1, 4)
