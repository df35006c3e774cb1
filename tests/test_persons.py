"""Tests of persons.py: the drawn persons and signers of the built-in benchmarks agree with the
keypoint conventions of data.py and poses.py, are deterministic for a look, follow the pose (a
signer's hands drawn in skin over the top, a lost hand not at all) and give None where there is
no body to draw.

    python -m pytest -q tests/test_persons.py
"""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import data
import deepfashion
import poses
import persons

REAL = deepfashion.read_keypoint_csv(deepfashion.BUNDLED_ANNOTATIONS)
COMPLETE = next(kp for _, kp in sorted(REAL.items()) if not poses.is_missing(kp).any())
DRESS = "fasionWOMENDressesid0000553705"  # a real item of the bundled poses


def test_restated_convention_agrees_with_data():
    # persons.py restates data.py's frame and missing-joint rule to avoid an import circle
    assert persons.FRAME == data.FRAME
    real = np.stack(list(REAL.values()))  # (N, 18, 2), real missing joints among them
    odd = np.array([[[-1.0, 5.0], [5.0, -0.5], [0.0, 0.0]] + [[3.0, 4.0]] * 15])  # one coordinate negative
    for kp in (*real, *odd):
        np.testing.assert_array_equal(persons._visible(kp), ~poses.is_missing(kp))


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


# ----------------------------------------------------------------------------- the signer

SIGNER = "train/phoenix14t_train_x/0"
SIZE = (128, 104)  # the sign benchmark's (H, W)
TO_IMAGE = np.array([SIZE[1] / 210, SIZE[0] / 260])  # (x, y) scale from the 260x210 frame


def _fanned_hand(wrist, thumb_side: int) -> np.ndarray:
    """(21, 2) an open hand, fingers fanned upward from `wrist`, thumb out to `thumb_side`."""
    hand = [np.asarray(wrist, float)]
    for degrees in (thumb_side * 60, thumb_side * 24, thumb_side * 8, -thumb_side * 8, -thumb_side * 24):
        direction = np.array([np.sin(np.radians(degrees)), -np.cos(np.radians(degrees))])
        hand += [hand[0] + direction * (12 + 5 * k) for k in range(4)]  # knuckle 12 px out, then 5 px a joint
    return np.stack(hand)  # (21, 2)


def signing_pose() -> np.ndarray:
    """(50, 2) a plausible pose in the 260x210 frame: both wrists raised in front of the chest."""
    kp = np.full((50, 2), -1.0)
    kp[:8] = [[105, 70], [105, 105], [74, 105], [62, 150], [88, 140], [136, 105], [148, 150], [122, 140]]
    kp[persons.RIGHT_HAND:persons.RIGHT_HAND + 21] = _fanned_hand(kp[4], thumb_side=1)  # thumb toward the middle
    kp[persons.LEFT_HAND:persons.LEFT_HAND + 21] = _fanned_hand(kp[7], thumb_side=-1)
    return kp


def _pixel(image, point) -> np.ndarray:
    x, y = np.floor(np.asarray(point) * TO_IMAGE).astype(int)
    return np.asarray(image).astype(int)[y, x]  # (3,)


def test_restated_sign_convention_agrees_with_poses():
    assert persons.SIGN_FRAME == poses.SIGN50.frame and persons.SIGN_JOINTS == len(poses.SIGN50.joint_names)
    assert (persons.LEFT_HAND, persons.RIGHT_HAND, persons.HAND_POINTS) == (poses.LEFT_HAND, poses.RIGHT_HAND,
                                                                          poses.HAND_POINTS)
    # the palm's corners and the finger chains are the hand's 20 bones, built another way
    bones = {(0, f[0]) for f in persons.FINGERS} | {(a, b) for f in persons.FINGERS for a, b in zip(f, f[1:])}
    assert bones == set(poses.HAND_BONES)
    assert persons.PALM == (0,) + tuple(f[0] for f in persons.FINGERS)


def test_signer_look_is_deterministic_and_varied():
    look = persons.sample_signer_look(SIGNER, 0)
    persons.sample_signer_look.cache_clear()  # rebuilt, not the cached object
    assert persons.sample_signer_look(SIGNER, 0) == look
    assert persons.sample_signer_look(SIGNER, 1) != look  # the seed matters too
    looks = [persons.sample_signer_look(f"train/seq/{k}", 0) for k in range(200)]
    assert len(set(looks)) == 200  # a sequence drawn in many looks gets that many different signers
    assert {lk.hair_style for lk in looks} == set(persons.HAIR_STYLES)
    assert {lk.sleeves for lk in looks} == {"long", "short"}
    assert {lk.top[1] for lk in looks} == set(persons.PATTERNS)
    # the hands sign in front of the top and the wall: neither may come near the skin tone
    assert all(persons._far(lk.top[0], lk.skin, 180) and persons._far(lk.background, lk.skin, 80) for lk in looks)


def test_draw_signer_is_deterministic_and_sized():
    look, kp = persons.sample_signer_look(SIGNER, 0), signing_pose()
    first = persons.draw_signer(kp, look)
    assert first.size == (104, 128) and first.mode == "RGB"  # PIL (W, H), the default size
    np.testing.assert_array_equal(np.asarray(first), np.asarray(persons.draw_signer(kp.copy(), look)))
    assert persons.draw_signer(kp, look, (64, 52)).size == (52, 64)
    assert persons.draw_signer(kp, look, (32, 32), supersample=1).size == (32, 32)
    assert (np.asarray(first)[0, 0] == look.background).all()  # a corner is the wall


@pytest.mark.parametrize("sleeves", ["long", "short"])
def test_a_hand_is_drawn_in_skin_over_the_top_and_a_missing_one_not_at_all(sleeves):
    look = dataclasses.replace(persons.sample_signer_look(SIGNER, 0), sleeves=sleeves)
    kp = signing_pose()
    knuckles = kp[[persons.LEFT_HAND + 9, persons.RIGHT_HAND + 9]]  # (2, 2) the middle fingers' knuckles
    image = persons.draw_signer(kp, look)
    for knuckle in knuckles:  # both hands in front of the chest: skin over the top
        assert np.abs(_pixel(image, knuckle) - look.skin).sum() < 40
    no_left = kp.copy()
    no_left[persons.LEFT_HAND:persons.LEFT_HAND + 21] = -1  # the whole left hand lost
    image = persons.draw_signer(no_left, look)
    assert np.abs(_pixel(image, knuckles[0]) - look.skin).sum() > 150  # the top shows where it was
    assert np.abs(_pixel(image, knuckles[1]) - look.skin).sum() < 40  # the other hand is still drawn


def test_a_missing_body_wrist_takes_the_hands_wrist():
    kp = signing_pose()
    kp[7] = -1  # the left wrist lost by the body detector, kept by the hand's
    kp[persons.LEFT_HAND] = [126, 138]
    signer = persons.signer_geometry(kp, (256, 208))
    left = signer.arms[0]  # the left arm is drawn first
    np.testing.assert_allclose(left[2], kp[persons.LEFT_HAND] * np.array([208 / 210, 256 / 260]))
    assert left[3] is None  # the forearm already ends at the hand: no wrist between them


def test_no_neck_and_no_shoulders_gives_none():
    look = persons.sample_signer_look(SIGNER, 0)
    assert persons.draw_signer(np.full((50, 2), -1.0), look) is None
    kp = signing_pose()
    kp[[1, 2]] = -1  # no neck and only one shoulder: nothing to hang a body on
    assert persons.draw_signer(kp, look) is None
    kp = signing_pose()
    kp[[2, 5]] = -1  # a neck alone is enough (the shoulders are guessed either side of it)
    assert persons.draw_signer(kp, look) is not None
    kp = signing_pose()
    kp[1] = -1  # so are both shoulders without the neck
    assert persons.draw_signer(kp, look) is not None


REAL_SIGNING = sorted((Path(persons.__file__).resolve().parent / "assets" / "sign").glob("phoenix14t_*.csv"))


@pytest.mark.skipif(not REAL_SIGNING, reason="assets/sign holds no PHOENIX sequence")
def test_real_signing_frames_draw_their_hands():
    kp = np.loadtxt(REAL_SIGNING[0], delimiter=",", skiprows=2)[:, 1:].reshape(-1, 50, 2)  # (T, 50, 2)
    look = persons.sample_signer_look(SIGNER, 0)
    near = []
    for frame in kp[::10]:
        image = persons.draw_signer(frame, look)
        assert image is not None and image.size == (104, 128)
        near += [np.abs(_pixel(image, frame[h + 9]) - look.skin).sum() < 80
                 for h in (persons.LEFT_HAND, persons.RIGHT_HAND) if (frame[h + 9] >= 0).all()]
    assert np.mean(near) > 0.6  # mostly skin at the knuckle (the rest an edge between fingers)
