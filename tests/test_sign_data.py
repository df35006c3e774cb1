"""The sign-language data: the 50-joint layout drawn where the files say, COCO-WholeBody's 133
points mapped to it, the PHOENIX-layout fixture loaded, and the DeepFashion path untouched."""
from pathlib import Path

import numpy as np
import pytest

import data
import poses
import sign_data

FIXTURE = Path(__file__).parent / "fixtures" / "phoenix"
SEQUENCE = sign_data.SEQUENCES / "phoenix14t_train_01.csv"


def first_frame():
    files = sorted(sign_data.SEQUENCES.glob("phoenix14t_train_*.csv"))
    return sign_data.read_sequence(files[0])[0]  # (50, 2) in the 260x210 frame


def test_sequences_read_as_the_index_says():
    entries = sign_data.sequence_index()
    assert len(entries) == 47 and sum(e["frames"] for e in entries) == 3670
    for entry in entries[:3]:
        seq = sign_data.read_sequence(sign_data.SEQUENCES / entry["file"])
        assert seq.shape == (entry["frames"], 50, 2)
        visible = seq[~poses.is_missing(seq)]
        assert (visible[:, 0] < 210).all() and (visible[:, 1] < 260).all()  # x < W, y < H


def test_a_drawn_joint_lands_at_its_pixel():
    kp = first_frame()
    image = poses.render_pose(kp, 260, 210)  # already in the 260x210 frame
    for j in range(8):  # body joints are dots in their OpenPose colour
        if not poses.is_missing(kp[j]):
            x, y = np.round(kp[j]).astype(int)
            assert tuple(image[y, x]) == poses.POSE_COLORS[j], j
    # a finger bone is drawn in its finger's colour halfway along it
    hand = poses.RIGHT_HAND
    a, b = kp[hand + 9], kp[hand + 10]  # middle finger: knuckle to its next joint
    mid = np.round((a + b) / 2).astype(int)
    patch = image[mid[1] - 1:mid[1] + 2, mid[0] - 1:mid[0] + 2].reshape(-1, 3)
    assert any(tuple(p) == poses.FINGER_COLORS[2] for p in patch)


def test_a_missing_hand_is_simply_absent():
    kp = first_frame()
    without = kp.copy()
    without[poses.LEFT_HAND:poses.LEFT_HAND + poses.HAND_POINTS] = poses.MISSING
    full, less = poses.render_pose(kp, 260, 210), poses.render_pose(without, 260, 210)
    changed = (full != less).any(-1)
    assert changed.any()
    hand = kp[poses.LEFT_HAND:poses.LEFT_HAND + poses.HAND_POINTS]
    ys, xs = np.nonzero(changed)
    # every pixel that went away lies within the hand's bounding box (plus a bone's width)
    assert xs.min() >= hand[:, 0].min() - 3 and xs.max() <= hand[:, 0].max() + 3
    assert ys.min() >= hand[:, 1].min() - 3 and ys.max() <= hand[:, 1].max() + 3
    assert not poses.render_pose(np.full((50, 2), -1.0), 64, 52).any()


def test_flipping_swaps_the_hands():
    kp = first_frame()
    flipped = poses.flip_keypoints(kp, 210)
    left, right = poses.LEFT_HAND, poses.RIGHT_HAND
    assert np.allclose(flipped[left:left + 21, 0], 209 - kp[right:right + 21, 0])
    assert np.allclose(flipped[2], [209 - kp[5, 0], kp[5, 1]])  # right shoulder <- left shoulder
    assert np.allclose(poses.flip_keypoints(flipped, 210), kp)
    assert poses.pose_heatmaps(kp, 32, 32, frame=(260, 210)).shape == (50, 32, 32)


def test_wholebody_round_trip_keeps_body_and_hands():
    kp = first_frame()
    back = sign_data.from_wholebody(sign_data.to_wholebody(kp))
    keep = [j for j in range(50) if j != 1]  # the neck is rebuilt as the shoulders' midpoint
    assert np.allclose(back[keep], kp[keep], atol=1e-4)
    assert np.allclose(back[1], (kp[2] + kp[5]) / 2, atol=1e-4)
    wb = sign_data.to_wholebody(kp)
    assert np.allclose(wb[6], kp[2]) and np.allclose(wb[112 + 9], kp[poses.RIGHT_HAND + 9])  # COCO order


def test_wholebody_zero_means_missing_and_bad_files_say_so(tmp_path):
    points = np.zeros((133, 3))
    points[5, :2], points[6, :2] = (120, 100), (80, 100)
    kp = sign_data.from_wholebody(points)
    assert np.allclose(kp[1], (100, 100)) and poses.is_missing(kp[8:]).all() and poses.is_missing(kp[0])
    bad = tmp_path / "frame.txt"
    bad.write_text("1 2\n3 4\n")
    with pytest.raises(data.DataError, match="133 COCO-WholeBody points"):
        sign_data.read_wholebody_txt(bad)
    bad.write_text("1 x\n")
    with pytest.raises(data.DataError, match="frame.txt"):
        sign_data.read_wholebody_txt(bad)


def test_the_phoenix_fixture_loads():
    assert data.detect_layout(FIXTURE) == "phoenix"
    ds = data.PairDataset(FIXTURE, "train", 32, verbose=False)
    assert len(ds) == 6 and len(ds.videos) == 2 and ds.frame == (260, 210)
    for video, names in ds.videos.items():
        assert all(s == names[0] for s, t in ds.pairs if t in names)  # the first frame is the source
    item = ds[0]
    assert item["source"].shape == (3, 32, 32) and item["target_pose"].shape == (3, 32, 32)
    assert item["target_keypoints"].shape == (50, 2)
    raw = np.loadtxt(next((FIXTURE / "keypoints" / "train").glob("*/images0001.txt")))
    name = sorted(ds.videos.values())[0][0]
    assert name.endswith("_images0001")
    heat = data.PairDataset(FIXTURE, "test", 32, heatmaps=True, verbose=False)
    assert heat[0]["target_pose"].shape == (53, 32, 32)
    assert raw.shape == (133, 3)


def test_check_and_preview_work_on_the_fixture(tmp_path, capsys):
    assert data.check(FIXTURE) == 0
    out = capsys.readouterr().out
    assert "phoenix layout" in out and "videos" in out
    path = data.preview(FIXTURE, tmp_path / "p.png", image_size=64)
    assert path.is_file()


def test_a_missing_keypoint_split_is_one_line(tmp_path):
    (tmp_path / "keypoints" / "train").mkdir(parents=True)
    with pytest.raises(data.DataError, match="keypoints/test"):
        data.PairDataset(tmp_path, "test", 32)
