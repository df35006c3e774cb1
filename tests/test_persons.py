"""Tests of persons.py: the drawn persons of the built-in benchmark agree with data.py's
keypoint convention, are deterministic for an appearance, follow the pose and give None
where there is no body to draw.

    python -m pytest -q tests/test_persons.py
"""
import numpy as np

import data
import persons

REAL = data.read_keypoint_csv(data.BUNDLED_ANNOTATIONS)
COMPLETE = next(kp for _, kp in sorted(REAL.items()) if not data.is_missing(kp).any())
DRESS = "fasionWOMENDressesid0000553705"  # a real item of the bundled poses


def test_restated_convention_agrees_with_data():
    # persons.py restates data.py's frame and missing-joint rule to avoid an import circle
    assert persons.FRAME == data.FRAME
    poses = np.stack(list(REAL.values()))  # (N, 18, 2), real missing joints among them
    odd = np.array([[[-1.0, 5.0], [5.0, -0.5], [0.0, 0.0]] + [[3.0, 4.0]] * 15])  # one coordinate negative
    for kp in (*poses, *odd):
        np.testing.assert_array_equal(persons._visible(kp), ~data.is_missing(kp))


def test_appearance_is_deterministic_per_item_and_seed():
    look = persons.sample_appearance(DRESS, 0)
    persons.sample_appearance.cache_clear()  # rebuilt, not the cached object
    assert persons.sample_appearance(DRESS, 0) == look
    assert look.legwear == "dress" and look.bottom == look.top  # the category in the name decides
    looks = {persons.sample_appearance(f"fasionMENTeesid{i:010d}", 0) for i in range(20)}
    assert len(looks) == 20  # items do not share a look


def test_draw_person_is_deterministic_and_follows_the_pose():
    look = persons.sample_appearance(DRESS, 0)
    first = persons.draw_person(COMPLETE, look, (64, 44))
    again = persons.draw_person(COMPLETE.copy(), look, (64, 44))
    assert first.size == (44, 64) and first.mode == "RGB"  # PIL (W, H)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    pixels = np.asarray(first).astype(int)  # (H, W, 3)
    assert (pixels[0, 0] == look.background).all()  # a corner is background
    for j in (1, 8, 11):  # neck and hips lie on the body, not on the background
        x, y = np.round(COMPLETE[j] * np.array([44 / 176, 64 / 256])).astype(int)
        assert np.abs(pixels[y, x] - look.background).sum() > 30


def test_no_torso_gives_none():
    look = persons.sample_appearance(DRESS, 0)
    assert persons.draw_person(np.full((18, 2), -1.0), look, (32, 22)) is None  # no joints at all
    legs_only = COMPLETE.copy()
    legs_only[[0, 1, 2, 3, 4, 5, 6, 7, 14, 15, 16, 17]] = -1  # neither neck nor shoulders
    assert persons.body_geometry(legs_only, (64, 44)) is None
    neck_only = np.full((18, 2), -1.0, np.float32)
    neck_only[1] = COMPLETE[1]
    assert persons.draw_person(neck_only, look, (32, 22)) is not None  # a neck is enough to hang a body on
