"""Tests of data.py: every layout on tiny fixtures, the keypoint conversions, the pose
renderer, flips, the built-in benchmark (determinism, split by item) and each bad input.

    python -m pytest -q tests/test_data.py
"""
import dataclasses
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import data
import deepfashion
import poses

REAL = deepfashion.read_keypoint_csv(deepfashion.BUNDLED_ANNOTATIONS)
# three real poses: two complete ones and one with missing joints (-1)
COMPLETE = [kp for _, kp in sorted(REAL.items()) if not poses.is_missing(kp).any()]
PARTIAL = next(kp for _, kp in sorted(REAL.items()) if 0 < poses.is_missing(kp).sum() < 10)
POSES = [COMPLETE[0], COMPLETE[1], PARTIAL]
CSV_NAMES = ["fashionWOMENDressesid0000000101_1front.jpg", "fashionWOMENDressesid0000000101_2side.jpg",
             "fashionMENTees_Tanksid0000000201_1front.jpg"]
NTED_PATHS = ["img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "img/WOMEN/Dresses/id_00000001/01_2_side.jpg",
              "img/MEN/Tees_Tanks/id_00000002/01_1_front.jpg"]


def _image(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (176, 256), color).save(path)


def _csv_row(name, kp, sep=": "):
    kp = kp.astype(int)
    return f"{name}{sep}{kp[:, 1].tolist()}{sep}{kp[:, 0].tolist()}\n"  # y first, as the files are


def make_csv_layout(root, prefix="fashion", header=True, sep=": ", pad=False):
    """The CFLD layout; `pad` writes the older 256x256-frame `fasion-annotation` file instead."""
    ann = root / (f"{prefix}-annotation-train.csv" if pad else f"{prefix}-resize-annotation-train.csv")
    shift = np.array([deepfashion.BORDER if pad else 0, 0])
    rows = [_csv_row(n, np.where(kp < 0, -1, kp + shift), sep) for n, kp in zip(CSV_NAMES, POSES)]
    root.mkdir(parents=True, exist_ok=True)
    ann.write_text("name:keypoints_y:keypoints_x\n" + "".join(rows))
    pairs = [(CSV_NAMES[0], CSV_NAMES[1]), (CSV_NAMES[1], CSV_NAMES[0]), (CSV_NAMES[2], CSV_NAMES[2])]
    (root / f"{prefix}-resize-pairs-train.csv").write_text(("from,to\n" if header else "") +
                                                         "".join(f"{s},{t}\n" for s, t in pairs))
    for i, name in enumerate(CSV_NAMES):
        _image(root / "train_highres" / name, (40 * i, 100, 200))
    return pairs


def _pose_txt(root, rel, kp):
    path = deepfashion._pose_path(root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    padded = np.where(kp < 0, -1, kp + np.array([deepfashion.BORDER, 0]))  # the 256x256 frame
    path.write_text("".join(f"{x:.0f} {y:.0f}\n" for x, y in padded))


def make_pose_layout(root, layout):
    """NTED/PIDM (`train_pairs.txt`, target first) or PCDM (`train_data.json`)."""
    for i, (rel, kp) in enumerate(zip(NTED_PATHS, POSES)):
        _image(root / rel, (200, 40 * i, 60))
        _pose_txt(root, rel, kp)
    if layout == "nted":
        (root / "train_pairs.txt").write_text(f"{NTED_PATHS[0]},{NTED_PATHS[1]},{NTED_PATHS[2]}\n")
    else:
        entries = [{"source_image": NTED_PATHS[1], "target_image": NTED_PATHS[0]},
                   {"source_image": NTED_PATHS[2], "target_image": NTED_PATHS[0]}]
        (root / "train_data.json").write_text(json.dumps(entries))


# ----------------------------------------------------------------------------- conversions

def test_bundled_file_converts_y_first_and_40_pixel_border():
    kp = REAL["fasionWOMENDressesid0000553705_4full.jpg"]  # y [24, 49, ...], x [129, 122, ...] at 256x256
    assert kp.shape == (18, 2) and kp.dtype == np.float32
    np.testing.assert_array_equal(kp[:2], [[129 - 40, 24], [122 - 40, 49]])
    assert len(REAL) == 4061
    assert poses.is_missing(REAL["fasionWOMENSweatersid0000224202_3back.jpg"])[9]  # its r_knee is -1


@pytest.mark.parametrize("prefix,header,sep", [("fashion", True, ": "), ("fasion", False, ":")])
def test_csv_layout_both_frames_agree(tmp_path, prefix, header, sep):
    pairs = make_csv_layout(tmp_path / "a", prefix, header, sep)
    make_csv_layout(tmp_path / "b", "fasion", True, ": ", pad=True)  # the same poses, 256x256 frame
    assert data.detect_layout(tmp_path / "a") == "csv"
    assert data.load_pairs(tmp_path / "a", "train") == pairs
    a, b = data.load_annotations(tmp_path / "a", "train"), data.load_annotations(tmp_path / "b", "train")
    for name, kp in zip(CSV_NAMES, POSES):
        np.testing.assert_array_equal(a[name], kp)
        np.testing.assert_array_equal(b[name], kp)
    assert (a[CSV_NAMES[2]][poses.is_missing(PARTIAL)] == -1).all()


@pytest.mark.parametrize("layout", ["nted", "pcdm"])
def test_pose_file_layouts(tmp_path, layout):
    make_pose_layout(tmp_path, layout)
    assert data.detect_layout(tmp_path) == layout
    names = [deepfashion.flat_name(p) for p in NTED_PATHS]
    assert names[0] == "fashionWOMENDressesid0000000101_1front.jpg"
    # NTED lists the target first, then its sources; PCDM names them
    assert data.load_pairs(tmp_path, "train") == [(names[1], names[0]), (names[2], names[0])]
    keypoints = data.load_annotations(tmp_path, "train")
    for name, kp in zip(names, POSES):
        np.testing.assert_array_equal(keypoints[name], kp)
    ds = data.PairDataset(tmp_path, "train", 32, verbose=False)
    assert ds.layout == layout and ds.image_path(names[0]) == tmp_path / NTED_PATHS[0]
    item = ds[1]
    assert item["source"].shape == (3, 32, 32) and item["source_name"] == names[2]


def test_layout_is_announced_in_one_line(tmp_path, capsys):
    make_csv_layout(tmp_path)
    data.PairDataset(tmp_path, "train", 16)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "csv layout" in out and "3 pairs" in out


# ----------------------------------------------------------------------------- pose maps

def _arm_only():
    kp = np.full((18, 2), -1.0, np.float32)
    kp[2], kp[3] = (20, 20), (100, 100)  # r_shoulder, r_elbow: limb 2 of LIMBS
    return kp


def test_render_pose_draws_limb_colour_and_nothing_for_missing_joints():
    pose = poses.render_pose(_arm_only(), 128, 128)
    assert pose.shape == (128, 128, 3) and pose.dtype == np.uint8
    assert poses.LIMBS[2] == (2, 3)
    assert tuple(pose[60, 60]) == poses.POSE_COLORS[2]  # the limb's midpoint
    assert tuple(pose[20, 20]) == poses.POSE_COLORS[2] and tuple(pose[100, 100]) == poses.POSE_COLORS[3]
    ys, xs = np.nonzero(pose.any(-1))
    assert np.abs(ys - xs).max() <= 5  # every drawn pixel hugs the one visible limb
    assert not poses.render_pose(np.full((18, 2), -1.0), 64, 64).any()


def test_render_pose_scales_x_and_y_separately():
    kp = COMPLETE[0]
    direct = poses.render_pose(kp, 128, 88, frame=(256, 176))
    scaled = poses.render_pose(poses.scale_keypoints(kp, (256, 176), (128, 88)), 128, 88)
    np.testing.assert_array_equal(direct, scaled)
    wide = poses.scale_keypoints(kp, (256, 176), (256, 256))
    np.testing.assert_allclose(wide[:, 0], kp[:, 0] * 256 / 176, rtol=1e-6)
    np.testing.assert_allclose(wide[:, 1], kp[:, 1])


def test_heatmaps_peak_at_joints_and_vanish_for_missing():
    kp = _arm_only()
    maps = poses.pose_heatmaps(kp, 128, 128)
    assert maps.shape == (18, 128, 128) and maps.dtype == np.float32
    assert maps[2, 20, 20] == pytest.approx(1.0) and maps[3].argmax() == 100 * 128 + 100
    sigma = poses.HEATMAP_SIGMA * 128
    assert maps[2, 20, 23] == pytest.approx(np.exp(-9 / (2 * sigma**2)), rel=1e-5)
    assert not maps[[0, 1, 4]].any()


def test_flip_swaps_left_and_right():
    perm = np.array(poses.FLIP_PERM)
    np.testing.assert_array_equal(perm[perm], np.arange(18))  # an involution
    assert poses.KEYPOINT_NAMES[perm[2]] == "l_shoulder" and perm[0] == 0
    kp = poses.scale_keypoints(COMPLETE[0], (256, 176), (128, 128))
    np.testing.assert_allclose(poses.flip_keypoints(poses.flip_keypoints(kp, 128), 128), kp)
    arm = _arm_only()
    flipped = poses.render_pose(poses.flip_keypoints(arm, 128), 128, 128)
    mirrored = poses.render_pose(arm, 128, 128)[:, ::-1]
    assert (flipped.any(-1) != mirrored.any(-1)).mean() < 0.01  # the same pixels are drawn...
    assert poses.LIMBS[4] == (5, 6) and tuple(flipped[60, 127 - 60]) == poses.POSE_COLORS[4]  # ...as a left arm


def _standing(size=32, dx=0.0, dy=0.0):
    """A complete COCO-18 pose standing in a size x size frame, shifted dx pixels to the right, dy down."""
    kp = np.array([[16, 4], [16, 8], [12, 8], [11, 13], [10, 17], [20, 8], [21, 13], [22, 17], [13, 18],
                   [13, 24], [13, 30], [19, 18], [19, 24], [19, 30], [15, 3], [17, 3], [14, 3], [18, 3]], np.float32)
    return torch.from_numpy(kp + np.float32([dx, dy]))


def test_paint_source_colours_moves_each_part_colour_to_the_target_pose():
    """Closed form: a source whose torso is red and everything else blue; in a target pose 6 px to the
    right the torso is painted exactly red, where the source's torso never was."""
    src_kp, tgt_kp = _standing()[None], _standing(dx=6)[None]  # (1, 18, 2) each
    torso = poses.paint_masks(src_kp, 32)[0, 4]  # (S, S) the source's torso, after the 4 trunk bones
    source = torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).repeat(1, 32, 32)  # blue in [-1, 1]
    source[:, torso] = torch.tensor([1.0, -1.0, -1.0])[:, None]  # a red torso
    painted = poses.paint_source_colours(source[None], src_kp, tgt_kp)[0]  # (4, S, S)
    centre = painted[:, 12:15, 21:24].flatten(1)  # the target's torso centre, (22, 13), not in the source's torso
    assert not torso[12:15, 21:24].any()
    assert torch.allclose(centre[:3], torch.tensor([1.0, 0, 0])[:, None]) and centre[3].eq(1).all()  # red
    assert painted[0, 13, 16] < 0.5  # the source's torso centre lies on the target's right arm: not red
    assert painted[:, :, :2].eq(0).all()  # far left: nothing painted
    # the same pose and a flat source: its colour comes back wherever something is painted
    flat = torch.full((1, 3, 32, 32), 0.2)
    same = poses.paint_source_colours(flat, src_kp, src_kp)[0]  # (4, S, S)
    assert torch.allclose(same[:3, same[3] > 0], torch.tensor(0.6)) and same[3].sum() > 100


def test_paint_source_colours_skips_what_either_pose_lacks():
    kp = _standing()[None]
    no_source = torch.full_like(kp, poses.MISSING)
    assert poses.paint_source_colours(torch.zeros(1, 3, 32, 32), no_source, kp).eq(0).all()
    no_arm = kp.clone()
    no_arm[0, 4] = poses.MISSING  # the right wrist: the right forearm has no colour to carry
    with_arm = poses.paint_source_colours(torch.zeros(1, 3, 32, 32), kp, kp)[0, 3]
    without = poses.paint_source_colours(torch.zeros(1, 3, 32, 32), no_arm, kp)[0, 3]
    assert with_arm[16, 10] == 1 and without[16, 10] == 0 and without.sum() < with_arm.sum()


def test_source_part_colours_read_once_paint_the_same():
    """Streaming reads a source's part colours once (poses.source_part_colours) and paints every frame
    from them: the same map as painting from the source's pose each time, for poses with missing joints."""
    g = torch.Generator().manual_seed(0)
    source = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1  # (B, 3, S, S)
    src_kp, tgt_kp = _standing()[None].repeat(3, 1, 1), _standing(dx=4)[None].repeat(3, 1, 1)  # (B, 18, 2)
    src_kp[1, 3:5] = poses.MISSING  # a source without its right forearm
    tgt_kp[2, 11:14] = poses.MISSING  # a target without its left leg
    direct = poses.paint_source_colours(source, src_kp, tgt_kp)  # (B, 4, S, S)
    cached = poses.paint_source_colours(source, None, tgt_kp, part_colours=poses.source_part_colours(source, src_kp))
    assert torch.equal(direct, cached) and direct[:, 3].sum() > 0


def test_warp_source_is_the_identity_in_the_same_pose_and_moves_with_the_pose():
    """Closed forms of the part-wise warp: in the source's own pose every covered pixel is the source's
    own pixel; with the whole pose 5 px to the right (every bone turned by 0, scaled by 1) a covered
    pixel is the source pixel 5 px to its left, patterns included, which one mean colour per part
    could not give."""
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1  # (1, 3, S, S): noise, a "pattern" everywhere
    kp = _standing()[None]  # (1, 18, 2)
    same = poses.warp_source(source, kp, kp)[0]  # (4, S, S)
    covered = same[3] > 0
    assert covered.sum() > 200 and same[:3, ~covered].eq(0).all()
    torch.testing.assert_close(same[:3, covered], ((source[0] + 1) / 2)[:, covered], atol=1e-5, rtol=0)
    moved = poses.warp_source(source, kp, _standing(dx=5)[None])[0]  # (4, S, S)
    inside = moved[3, :, 5:] > 0  # (S, S - 5): covered, and its source pixel inside the image
    torch.testing.assert_close(moved[:3, :, 5:][:, inside], ((source[0, :, :, :-5] + 1) / 2)[:, inside],
                               atol=1e-5, rtol=0)
    assert inside.sum() > 200


def test_warp_source_reaches_past_the_part_masks_and_skips_what_either_pose_lacks():
    kp = _standing()[None]
    covered = poses.warp_source(torch.zeros(1, 3, 32, 32), kp, kp)[0, 3] > 0
    masks = poses.paint_masks(kp, 32).any(1)[0]  # (S, S)
    assert (covered & ~masks).sum() > 20 and not (masks & ~covered).any()  # hair and hems: beyond the masks
    no_source = torch.full_like(kp, poses.MISSING)
    assert poses.warp_source(torch.zeros(1, 3, 32, 32), no_source, kp).eq(0).all()
    assert poses.source_map("warp", torch.zeros(1, 3, 32, 32), kp, kp).shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match="source paint 'blur'"):
        poses.source_map("blur", torch.zeros(1, 3, 32, 32), kp, kp)


def test_warp_source_moves_the_whole_head_with_its_hair():
    """The head is one part (poses.HEAD_RADIUS around the face joints' centre): a pixel above the head,
    farther from every head bone than the reach, is carried, the source's own pixel in the same pose and
    the pixel 5 px to its left with the pose 5 px to the right; a back view (the ears alone) still has a
    head, a pose without face joints has none."""
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1  # (1, 3, S, S)
    kp = _standing(dy=6)[None]  # (1, 18, 2): the head centre at (16, 9.2), 4.8 px above the neck
    top = (4, 16)  # (row, column): 5.2 px above the head centre, 5 px above the eyes and ears
    bones = poses._segment_masks(kp, poses.COCO18, 32)[0]  # (L - 1, S, S)
    assert not bones[:, top[0], top[1]].any()  # no part covers it ...
    same = poses.warp_source(source, kp, kp)[0]  # (4, S, S)
    assert same[3, top[0], top[1]] == 1  # ... the head does
    torch.testing.assert_close(same[:3, top[0], top[1]], (source[0, :, top[0], top[1]] + 1) / 2, atol=1e-5, rtol=0)
    moved = poses.warp_source(source, kp, _standing(dx=5, dy=6)[None])[0]  # (4, S, S)
    torch.testing.assert_close(moved[:3, top[0], top[1] + 5], (source[0, :, top[0], top[1]] + 1) / 2,
                               atol=1e-5, rtol=0)
    back = kp.clone()
    back[0, [0, 14, 15]] = poses.MISSING  # no nose, no eyes: the ears' centre (16, 9) is the head's
    assert poses.warp_source(source, back, back)[0, 3, top[0], top[1]] == 1
    faceless = kp.clone()
    faceless[0, [0, 14, 15, 16, 17]] = poses.MISSING
    assert poses.warp_source(source, faceless, faceless)[0, 3, top[0], top[1]] == 0


def test_warp_source_continues_a_leg_the_frame_cuts_off():
    """A pose without knees and ankles (an upper-body crop) gets them where the legs would go on
    (poses.THIGH_PER_TORSO below the hip along neck -> hip, then SHIN_PER_THIGH); seen joints stay;
    so the warp carries the trousers below the hips, the source's own pixels in the same pose."""
    kp = _standing()[None]
    crop = kp.clone()
    crop[0, [9, 10, 12, 13]] = poses.MISSING
    done = poses._continue_legs(crop, poses.COCO18)[0]  # (18, 2)
    neck, hip = kp[0, 1], kp[0, 8]
    torch.testing.assert_close(done[9], hip + poses.THIGH_PER_TORSO * (hip - neck))
    torch.testing.assert_close(done[10], done[9] + poses.SHIN_PER_THIGH * (done[9] - hip))
    assert torch.equal(poses._continue_legs(kp, poses.COCO18), kp)  # nothing missing: nothing moves
    sign = torch.rand(1, 50, 2)
    assert torch.equal(poses._continue_legs(sign, poses.SIGN50), sign)  # no legs in the layout
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    warped = poses.warp_source(source, crop, crop)[0]  # (4, S, S)
    thigh = (24, 12)  # (row, column): on the continued right thigh, 6 px below the hip
    assert warped[3, thigh[0], thigh[1]] == 1 and warped[3, 24:].sum() > 20
    torch.testing.assert_close(warped[:3, thigh[0], thigh[1]], (source[0, :, thigh[0], thigh[1]] + 1) / 2,
                               atol=1e-5, rtol=0)


def test_dataset_flip_mirrors_images_and_poses_together(tiny_root):
    ds = data.PairDataset(tiny_root, "train", 32, flip=True, verbose=False)
    plain, flipped = ds.load_item(0, flipped=False), ds.load_item(0, flipped=True)
    for role in ("source", "target"):
        torch.testing.assert_close(flipped[role], plain[role].flip(-1))
        kp = poses.flip_keypoints(plain[f"{role}_keypoints"].numpy(), 32)
        torch.testing.assert_close(flipped[f"{role}_keypoints"], torch.from_numpy(kp))
        torch.testing.assert_close(flipped[f"{role}_pose"], ds.pose_map(kp))


# ----------------------------------------------------------------------------- dataset

def test_dataset_items_and_batches(tiny_root):
    ds = data.PairDataset(tiny_root, "train", 48, heatmaps=True, verbose=False)
    assert ds.layout == "csv" and ds.pose_channels == 21 and len(ds) == len(ds.pairs) > 0
    item = ds[0]
    assert item["source"].shape == item["target"].shape == (3, 48, 48)
    assert item["source_pose"].shape == (21, 48, 48)
    assert -1 <= item["source"].min() < item["source"].max() <= 1
    assert 0 <= item["target_pose"].min() and item["target_pose"].max() <= 1
    kp = data.load_annotations(tiny_root, "train")[item["target_name"]]
    np.testing.assert_allclose(item["target_keypoints"].numpy(), poses.scale_keypoints(kp, (256, 176), (48, 48)))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["target_pose"].shape == (4, 21, 48, 48) and len(batch["source_name"]) == 4


def test_resize_for_eval_and_grid(tmp_path):
    images = torch.full((2, 3, 64, 64), -0.5)
    out = data.resize_for_eval(images)
    assert out.shape == (2, 3, 256, 176)
    torch.testing.assert_close(out, torch.full_like(out, -0.5))  # a constant stays that constant
    edges = data.resize_for_eval(torch.randint(0, 2, (1, 3, 64, 64)).float(), (32, 22))
    assert edges.shape == (1, 3, 32, 22) and edges.min() >= 0 and edges.max() <= 1  # clamped in [0, 1]
    path = data.save_grid([[images[0], torch.rand(21, 64, 64)], [images[1], None]], tmp_path / "g.png",
                          labels=["image", "pose"], value_range=[(-1, 1), (0, 1)], pad=2)
    assert Image.open(path).size == (2 + 2 * 66, 14 + 2 + 2 * 66)


# ----------------------------------------------------------------------------- the benchmark

def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "benchmark.json")
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_benchmark_is_deterministic_for_a_seed(tiny_root, tmp_path):
    data.synthesize(tmp_path / "again", size=(64, 44), seed=0, max_items=12)
    assert _digest(tmp_path / "again") == _digest(tiny_root)
    data.synthesize(tmp_path / "other", size=(64, 44), seed=1, max_items=12)
    assert _digest(tmp_path / "other") != _digest(tiny_root)


def test_benchmark_splits_by_item_and_keeps_real_pairs(tiny_root):
    meta = json.loads((tiny_root / "benchmark.json").read_text())["counts"]
    assert meta["rows"] == 4061 and meta["skipped_no_joints"] == 640  # counted, not silently dropped
    assert meta["items_train"] + meta["items_test"] == 12 and meta["items_test"] == 1
    real_pairs = {(s, t) for s, t, _ in deepfashion.read_pair_csv(deepfashion.BUNDLED_PAIRS)}
    items = {}
    for split in data.SPLITS:
        pairs = data.load_pairs(tiny_root, split)
        assert pairs and set(pairs) <= real_pairs
        assert all(deepfashion.item_id(s) == deepfashion.item_id(t) for s, t in pairs)
        items[split] = {deepfashion.item_id(s) for s, _ in pairs}
        keypoints = data.load_annotations(tiny_root, split)
        np.testing.assert_array_equal(keypoints[pairs[0][0]], REAL[pairs[0][0]])  # the real pose, converted
    assert not items["train"] & items["test"]


def test_user_annotations_give_all_ordered_pairs(tmp_path):
    rows = [("me_1front.jpg", COMPLETE[0]), ("me_2side.jpg", COMPLETE[1]), ("me_3back.jpg", PARTIAL),
            ("you_1front.jpg", COMPLETE[2]), ("you_2side.jpg", COMPLETE[3]),
            ("you_7flat.jpg", np.full((18, 2), -1.0))]
    path = tmp_path / "my-resize-annotation.csv"  # 'resize': the 256x176 frame
    path.write_text("name:keypoints_y:keypoints_x\n" + "".join(_csv_row(n, kp) for n, kp in rows))
    counts = data.synthesize(tmp_path / "out", size=(32, 22), annotations=path)
    assert counts["skipped_no_joints"] == 1 and counts["items_train"] + counts["items_test"] == 2
    assert counts["pairs_train"] + counts["pairs_test"] == 3 * 2 + 2 * 1
    keypoints = {**data.load_annotations(tmp_path / "out", "train"), **data.load_annotations(tmp_path / "out", "test")}
    np.testing.assert_array_equal(keypoints["me_3back.jpg"], PARTIAL)
    image = next((tmp_path / "out" / "train_highres").iterdir())
    assert Image.open(image).size == (22, 32)


def test_ensure_benchmark_builds_once_and_atomically(tmp_path, capsys):
    path = data.ensure_benchmark((32, 22), root=tmp_path, max_items=4)
    assert (path / "benchmark.json").is_file() and capsys.readouterr().out.count("\n") == 1
    assert data.ensure_benchmark((32, 22), root=tmp_path, max_items=4) == path
    assert capsys.readouterr().out == ""  # reused, not redrawn
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left behind
    (tmp_path / "benchmark-32x22").mkdir()
    with pytest.raises(data.DataError, match="not a finished benchmark"):
        data.ensure_benchmark((32, 22), root=tmp_path)


# ----------------------------------------------------------------------------- bad input

def _break(root, layout, kind):
    """Damage a fresh fixture one way; return what the one-line error must mention."""
    if layout == "csv":
        make_csv_layout(root)
        ann, pairs = root / "fashion-resize-annotation-train.csv", root / "fashion-resize-pairs-train.csv"
        lines = ann.read_text().splitlines(keepends=True)
        if kind == "malformed row":
            ann.write_text("".join(lines[:2]) + "oops.jpg: [1, 2, 3]\n" + "".join(lines[2:]))
            return [f"{ann}:3", "expected 'name:"]
        if kind == "wrong count":
            ann.write_text("".join(lines[:2]) + lines[2].replace("[", "[5, ", 1))
            return [f"{ann}:3", "expected 18 keypoints", "19 y"]
        if kind == "unknown image":
            pairs.write_text(pairs.read_text() + f"{CSV_NAMES[0]},ghost.jpg\n")
            return [f"{pairs}:5", "ghost.jpg", "no keypoint row"]
        if kind == "malformed pair":
            pairs.write_text(pairs.read_text() + "lonely.jpg\n")
            return [f"{pairs}:5", "expected 'from,to'"]
        (root / "train_highres" / CSV_NAMES[1]).unlink()  # missing image
        return [f"{pairs}:2", "image file not found", CSV_NAMES[1]]
    make_pose_layout(root, layout)
    pose = deepfashion._pose_path(root, NTED_PATHS[2])
    if kind == "wrong count":
        pose.write_text("".join(pose.read_text().splitlines(keepends=True)[:17]))
        return [str(pose), "expected 18 rows", "got 17"]
    pose.unlink()  # an image without its keypoint file
    row = "train_pairs.txt:1" if layout == "nted" else "train_data.json: entry 1"
    return [row, "expected " + str(pose), NTED_PATHS[2]]


@pytest.mark.parametrize("layout,kind", [
    ("csv", "malformed row"), ("csv", "wrong count"), ("csv", "unknown image"), ("csv", "malformed pair"),
    ("csv", "missing image"), ("nted", "wrong count"), ("nted", "unknown image"), ("pcdm", "unknown image"),
])
def test_bad_input_gives_one_line_naming_file_and_row(tmp_path, layout, kind):
    expected = _break(tmp_path, layout, kind)
    with pytest.raises(data.DataError) as err:
        data.PairDataset(tmp_path, "train", 16, verbose=False)
    message = str(err.value)
    assert "\n" not in message and all(e in message for e in expected), message


def test_missing_folder_and_cli_exit_code(tmp_path, capsys):
    with pytest.raises(data.DataError, match="data folder not found"):
        data.PairDataset(tmp_path / "nowhere", "train", 16)
    with pytest.raises(SystemExit) as exit_:
        data.main(["--check", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_cli_check_and_preview(tiny_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        data.main(["--check", str(tiny_root)])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "csv layout" in out and "0 missing" in out
    (tiny_root / "test_highres" / data.load_pairs(tiny_root, "test")[0][0]).rename(tmp_path / "away.jpg")
    try:
        with pytest.raises(SystemExit) as exit_:
            data.main(["--check", str(tiny_root)])
        assert exit_.value.code == 1 and "1 missing" in capsys.readouterr().out
    finally:  # the benchmark is shared with the other tests: put the image back
        (tmp_path / "away.jpg").rename(tiny_root / "test_highres" / data.load_pairs(tiny_root, "test")[0][0])
    with pytest.raises(SystemExit) as exit_:
        data.main(["--preview", str(tiny_root), "--out", str(tmp_path / "p.png"), "--count", "2"])
    assert exit_.value.code == 0 and Image.open(tmp_path / "p.png").size == (2 + 4 * 178, 14 + 2 + 2 * 258)


@pytest.mark.parametrize("argv, expected", [
    ([], "got 0"), (["--check", "a", "--bench", "b"], "got 2 (--check --bench)"), (["--bogus"], "--bogus"),
])
def test_cli_needs_exactly_one_task(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        data.main(argv)
    message = str(exit_.value.code)  # sys.exit("error: ...") prints it and exits 1
    assert message.startswith("error: ") and expected in message and "\n" not in message


def test_cli_flags_come_from_the_dataclass():
    cfg = data.parse_command(["--synthesize", "out", "--size", "64x44", "--max-items", "3"])
    assert cfg == data.DataCommand(synthesize="out", size="64x44", max_items=3)


def test_resolve_config_presets_instances_and_dicts():
    @dataclasses.dataclass
    class Toy:
        width: int = 8
    presets = {"small": Toy(4), "large": Toy(16)}
    preset = cli.resolve_config("small", Toy, presets, "toy")
    assert preset == Toy(4) and preset is not presets["small"]  # a copy: the caller may edit it
    given = Toy(5)
    assert cli.resolve_config(given, Toy, presets, "toy") is given
    assert cli.resolve_config({"width": 7}, Toy, presets, "toy") == Toy(7)
    for spec, message in [("huge", "unknown toy preset 'huge'; choices: small, large"),
                          ({"height": 1}, "toy config: unknown fields ['height']"), (3, "got int")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            cli.resolve_config(spec, Toy, presets, "toy")
