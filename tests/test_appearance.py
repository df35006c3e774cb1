"""Tests of appearance.py: CIELAB against published values, body-part regions where the joints
say, the part colour of a drawn person equal to the colour it was drawn in, and the two scores
at their closed-form extremes.

    python -m pytest -q tests/test_appearance.py
"""
import dataclasses

import numpy as np
import torch

import appearance
import data
import deepfashion
import poses
import persons

REAL = deepfashion.read_keypoint_csv(deepfashion.BUNDLED_ANNOTATIONS)
COMPLETE = next(kp for _, kp in sorted(REAL.items()) if not poses.is_missing(kp).any())


def test_lab_matches_published_values():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    lab = appearance.srgb_to_lab(rgb)
    # sRGB primaries in CIELAB (D65), as tabulated by Lindbloom and colour-science
    want = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                         [32.30, 79.19, -107.86]], dtype=torch.float64)
    torch.testing.assert_close(lab, want, atol=0.02, rtol=0)


def test_regions_lie_where_the_joints_are():
    kp = np.full((18, 2), -1.0)
    kp[[1, 2, 5, 8, 11]] = [[20, 10], [12, 10], [28, 10], [14, 40], [26, 40]]  # neck, shoulders, hips
    kp[3] = [8, 25]  # right elbow
    masks = appearance.part_masks(kp, 64, 44)
    torso, arm = masks[0], masks[1]
    assert torso[25, 20] and not torso[11, 13] and not torso[39, 15]  # the centre in, the corners out (60 %)
    ys, xs = np.nonzero(arm)
    assert 12 <= ys.min() and ys.max() <= 23  # the middle 60 % of the 15-pixel upper arm
    assert not masks[2].any()  # the left elbow is missing: no left upper arm
    assert not (torso & arm).any()


def test_part_colour_of_a_drawn_person_is_its_garment():
    look = persons.sample_appearance("fasionMENTees_Tanksid0000001", 0)
    look = dataclasses.replace(look, top=((60, 150, 230), "plain", (250, 250, 250)), sleeves="long",
                               legwear="trousers", bottom=((214, 39, 40), "plain", (250, 250, 250)))
    size = (64, 44)
    image = np.asarray(persons.draw_person(COMPLETE, look, size))  # (H, W, 3)
    kp = poses.scale_keypoints(COMPLETE, data.FRAME, size)
    lab, rgb, visible = appearance.part_colours(torch.from_numpy(image.copy()).permute(2, 0, 1)[None] / 255.0, [kp])
    assert visible[0].all()
    top = appearance.srgb_to_lab(torch.tensor([60, 150, 230]) / 255.0)
    bottom = appearance.srgb_to_lab(torch.tensor([214, 39, 40]) / 255.0)
    for part, want in zip(appearance.PARTS, (top, top, top, bottom, bottom)):
        i = appearance.PARTS.index(part)
        assert float((lab[0, i] - want).norm()) < 8, part  # ΔE < 8: the garment, not the skin or background


def test_scores_at_their_extremes():
    torch.manual_seed(0)
    with_torso = [kp for _, kp in sorted(REAL.items()) if not poses.is_missing(kp)[list(appearance.TORSO)].any()]
    kp = [poses.scale_keypoints(kp, data.FRAME, (64, 44)) for kp in with_torso[:12]]
    images = torch.rand(12, 3, 1, 1).expand(-1, -1, 64, 44).clone()  # one flat colour per image
    colours = appearance.part_colours(images, kp)
    same = appearance.PartColourScore()
    same.add(colours, colours)
    result = same.result()
    assert result["part_dE"] < 1e-9 and abs(result["torso_corr"] - 1) < 1e-9
    # one fixed colour for every pair: a finite error and no correlation (a constant has none)
    mean_lab, mean_rgb = appearance.mean_part_colours([(images, kp)])
    fixed = appearance.PartColourScore()
    fixed.add(appearance.fixed_colour_like(colours, mean_lab, mean_rgb), colours)
    assert fixed.result()["part_dE"] > 1 and "torso_corr" not in fixed.result()


def test_source_sensitivity_of_a_copier_and_of_a_model_that_ignores_the_source():
    source, pose = torch.rand(6, 3, 8, 8) * 2 - 1, torch.rand(6, 3, 8, 8)
    order = appearance.swap_order(6)
    assert (order != torch.arange(6)).all() and sorted(order.tolist()) == list(range(6))
    copier = appearance.source_sensitivity(lambda s, p: s, source, pose)
    ignorer = appearance.source_sensitivity(lambda s, p: p * 2 - 1, source, pose)
    assert abs(copier["src_sens"] - 1) < 1e-6 and ignorer["src_sens"] == 0
