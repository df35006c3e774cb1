"""Tests of metrics.py's sign-language measures: Hand SSIM (crops centred on the middle-finger knuckles)
and the temporal error of a generated video against its real one. Closed forms and second computations:
the crop against index clamping (what replicate padding is), Hand SSIM against ssim on hand-sliced
crops, the temporal error against an explicit loop over the steps.

    pytest -q tests/test_sign_metrics.py
"""
import math

import numpy as np
import pytest
import torch

from metrics import (HAND_CROP, HAND_KNUCKLES, TemporalScore, hand_boxes, hand_crop_side, hand_crops,
                     hand_ssim, hand_window, ssim, temporal_error)

LEFT, RIGHT = HAND_KNUCKLES


def _keypoints(*knuckles) -> np.ndarray:
    """(50, 2) keypoints, all missing but the two knuckles: (left_xy or None, right_xy or None)."""
    kp = -np.ones((50, 2), np.float32)
    for joint, xy in zip(HAND_KNUCKLES, knuckles):
        if xy is not None:
            kp[joint] = xy
    return kp


def test_knuckles_and_crop_fraction_follow_the_layout():
    # hand point 9 (middle-finger knuckle) of the left hand (joints 8-28) and the right (29-49)
    assert HAND_KNUCKLES == (8 + 9, 29 + 9) == (17, 38)
    assert HAND_CROP * 260 == pytest.approx(60)


def test_crop_side_scales_with_the_image_height():
    assert hand_crop_side(260) == 60 and hand_crop_side(130) == 30 and hand_crop_side(520) == 120
    for (h, w), side in (((260, 210), 60), ((130, 105), 30)):
        images = torch.rand(1, 3, h, w)
        kp = [_keypoints((w / 2, h / 2), (w / 3, h / 2))]
        assert [box[2] for box in hand_boxes(kp, h, w)[0]] == [side, side]
        crops, which = hand_crops(images, kp)
        assert crops.shape == (2, 3, side, side)
        assert which.tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ValueError, match="11 px"):
        hand_crop_side(8)


def test_crop_box_is_centred_on_the_knuckle_pixel():
    h, w = 260, 210
    # fractional knuckles: x 100.4 -> column 100, y 50.6 -> row 51; (30.5, 200.5) -> (31, 201)
    kp = [_keypoints((100.4, 50.6), (30.5, 200.5))]
    assert hand_boxes(kp, h, w) == [[(51 - 30, 100 - 30, 60), (201 - 30, 31 - 30, 60)]]
    images = torch.zeros(1, 3, h, w)
    images[0, :, 51, 100] = 1.0  # a marker on each knuckle pixel
    images[0, :, 201, 31] = 0.5
    crops, _ = hand_crops(images, kp)  # (2, 3, 60, 60)
    for crop, value in zip(crops, (1.0, 0.5)):
        assert crop[:, 30, 30].tolist() == [value] * 3  # the centre pixel, row and column side // 2
        assert int((crop > 0).sum()) == 3  # and only there (three channels)


@pytest.mark.parametrize("xy", [(0.2, 0.3), (209.4, 259.2), (3.0, 250.0), (205.0, 1.0), (104.0, 130.0)])
def test_crop_near_a_border_stays_centred_and_is_replicate_padded(xy):
    torch.manual_seed(0)
    h, w = 260, 210
    images = torch.rand(1, 3, h, w)
    [[box, _]] = hand_boxes([_keypoints(xy, None)], h, w)
    top, left, side = box
    row, col = math.floor(xy[1] + 0.5), math.floor(xy[0] + 0.5)
    assert (top + side // 2, left + side // 2) == (row, col)  # centred, not shifted inwards
    crops, which = hand_crops(images, [_keypoints(xy, None)])
    assert which.tolist() == [[0, 0]]
    assert torch.equal(crops[0][:, side // 2, side // 2], images[0, :, row, col])
    # replicate padding is index clamping: each crop pixel is the nearest image pixel
    rows = (torch.arange(side) + top).clamp(0, h - 1)  # (s,)
    cols = (torch.arange(side) + left).clamp(0, w - 1)  # (s,)
    assert torch.equal(crops[0], images[0][:, rows][:, :, cols])


def test_hand_ssim_of_an_image_with_itself_is_one():
    torch.manual_seed(1)
    images = torch.rand(3, 3, 130, 105)
    kp = [_keypoints((30.0, 60.0), (80.0, 70.0)), _keypoints((2.0, 128.0), (104.0, 0.0)),
          _keypoints((50.0, 65.0), (52.0, 66.0))]
    values, count = hand_ssim(images, images, kp)
    assert count == 6 and values.shape == (6,)
    assert torch.allclose(values, torch.ones(6), atol=1e-6)
    # a video is a batch of frames with one keypoint set each
    video = torch.rand(5, 3, 260, 210)
    track = np.stack([_keypoints((60.0 + 5 * t, 150.0), (150.0 - 5 * t, 140.0)) for t in range(5)])  # (T, 50, 2)
    values, count = hand_ssim(video, video, track)
    assert count == 10 and torch.allclose(values, torch.ones(10), atol=1e-6)
    noisy = (video + 0.2 * torch.randn_like(video)).clamp(0, 1)
    assert hand_ssim(noisy, video, track)[0].max() < 0.9


def test_a_hand_missing_in_the_target_is_skipped():
    torch.manual_seed(2)
    gen, real = torch.rand(3, 3, 130, 105), torch.rand(3, 3, 130, 105)
    both = [_keypoints((30.0, 60.0), (80.0, 70.0))] * 3
    assert hand_ssim(gen, real, both)[1] == 6
    kp = [_keypoints((30.0, 60.0), None),  # the right knuckle missing (-1, -1)
          _keypoints(None, None),  # no visible hand: the image contributes nothing
          _keypoints((-1.0, 60.0), (80.0, 70.0))]  # any negative coordinate is missing
    values, count = hand_ssim(gen, real, kp)
    assert count == 2 and values.shape == (2,)
    _, which = hand_crops(real, kp)
    assert which.tolist() == [[0, 0], [2, 1]]  # (image, hand) of each crop, image by image
    outside = [_keypoints((105.0, 60.0), (30.0, 130.0))] * 3  # x = W, y = H: outside the frame
    values, count = hand_ssim(gen, real, outside)
    assert count == 0 and values.shape == (0,)


def test_hand_ssim_equals_ssim_on_hand_sliced_crops():
    torch.manual_seed(3)
    real = torch.rand(2, 3, 260, 210)
    gen = (real + 0.02 * torch.randn_like(real)).clamp(0, 1)
    knuckles = [((70.0, 120.0), (140.0, 110.0)), ((100.0, 200.0), None)]
    for i, pair in enumerate(knuckles):  # the hands drawn badly, the rest of the frame well
        for xy in filter(None, pair):
            x, y = int(xy[0]), int(xy[1])
            gen[i, :, y - 20:y + 20, x - 20:x + 20] = torch.rand(3, 40, 40)
    values, count = hand_ssim(gen, real, [_keypoints(*k) for k in knuckles])
    by_hand = []
    for i, pair in enumerate(knuckles):
        for xy in pair:
            if xy is not None:
                x, y = int(xy[0]), int(xy[1])
                rows, cols = slice(y - 30, y + 30), slice(x - 30, x + 30)  # 60 x 60, knuckle at (30, 30)
                by_hand.append(ssim(gen[i:i + 1, :, rows, cols], real[i:i + 1, :, rows, cols]))
    assert count == 3
    assert torch.allclose(values, torch.cat(by_hand), atol=1e-6)
    assert ssim(gen, real).mean() > values.max() + 0.2  # whole-frame SSIM hardly sees bad hands


def test_small_images_use_a_smaller_window():
    torch.manual_seed(4)
    assert hand_window(60) == (11, 1.5) and hand_window(11) == (11, 1.5)
    assert hand_window(10) == (9, 1.5 * 9 / 11) and hand_window(7) == (7, 1.5 * 7 / 11)
    h, w = 32, 26  # a 32 px benchmark: side round(7.38) = 7, under SSIM's 11 px window
    real = torch.rand(1, 3, h, w)
    gen = (real + 0.1 * torch.randn_like(real)).clamp(0, 1)
    kp = [_keypoints((10.0, 15.0), None)]
    values, count = hand_ssim(gen, real, kp)
    crop = (slice(None), slice(None), slice(15 - 3, 15 + 4), slice(10 - 3, 10 + 4))  # 7 x 7 around (15, 10)
    by_hand = ssim(gen[crop], real[crop], window=7, sigma=1.5 * 7 / 11)
    assert count == 1 and torch.allclose(values, by_hand, atol=1e-6)
    assert torch.allclose(hand_ssim(real, real, kp)[0], torch.ones(1), atol=1e-6)


def _video(t=6, h=24, w=20, seed=0) -> torch.Tensor:
    """A real-looking clip: a bright square sliding right one pixel a frame over a noisy background."""
    g = torch.Generator().manual_seed(seed)
    frames = 0.3 + 0.1 * torch.rand(t, 3, h, w, generator=g)  # (T, 3, H, W)
    for i in range(t):
        frames[i, :, 8:14, 2 + i:8 + i] = 0.9
    return frames


def _loop_error(gen: torch.Tensor, real: torch.Tensor) -> list:
    """The per-step error by an explicit loop over the steps and the pixels, float64."""
    g, r = gen.double().numpy(), real.double().numpy()
    out = []
    for t in range(len(g) - 1):
        total = 0.0
        for idx in np.ndindex(g.shape[1:]):
            total += abs((g[t + 1][idx] - g[t][idx]) - (r[t + 1][idx] - r[t][idx]))
        out.append(total / np.prod(g.shape[1:]))
    return out


def test_temporal_error_of_the_true_video_is_zero_and_a_frozen_one_scores_the_real_change():
    real = _video()
    truth = temporal_error(real, real)
    assert truth["mean"] == 0 and truth["worst"] == 0
    frozen = temporal_error(real[:1].expand_as(real), real)
    steps = [(real[t + 1] - real[t]).abs().mean().item() for t in range(len(real) - 1)]
    assert frozen["real_change"] == pytest.approx(np.mean(steps), rel=1e-6)
    assert frozen["mean"] == pytest.approx(frozen["real_change"], rel=1e-6)  # a frozen video scores mean |d_r|
    assert frozen["mean"] > truth["mean"] and frozen["real_change"] > 0.01
    assert truth["real_change"] == frozen["real_change"]  # a property of the real video alone
    assert set(truth) == {"mean", "worst", "worst_step", "real_change"}


def test_temporal_error_matches_an_explicit_loop_and_finds_the_worst_step():
    torch.manual_seed(5)
    real = _video()
    noisy = (real + 0.05 * torch.randn_like(real)).clamp(0, 1)  # fresh noise each frame: flicker
    result, loop = temporal_error(noisy, real), _loop_error(noisy, real)
    assert result["mean"] == pytest.approx(np.mean(loop), rel=1e-5)
    assert result["worst"] == pytest.approx(max(loop), rel=1e-5) and result["worst_step"] == int(np.argmax(loop))
    assert result["mean"] > 0.02  # flickering more than the real video scores badly too
    jump = real.clone()
    jump[3] = (jump[3] + 0.3).clamp(0, 1)  # one bad frame: steps 2 (into it) and 3 (out of it)
    assert temporal_error(jump, real)["worst_step"] in (2, 3)
    with pytest.raises(ValueError, match="2 frames"):
        temporal_error(real[:1], real[:1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        temporal_error(real * 2 - 1, real * 2 - 1)


def test_temporal_score_weights_videos_by_their_steps():
    torch.manual_seed(6)
    short, long = _video(t=3, seed=1), _video(t=7, seed=2)
    gen_short = (short + 0.02 * torch.randn_like(short)).clamp(0, 1)
    gen_long = long[:1].expand_as(long)  # frozen
    score = TemporalScore()
    assert score.result() == {}
    score.add(gen_short, short)
    one = temporal_error(gen_short, short)
    assert score.result()["mean"] == pytest.approx(one["mean"]) and score.result()["steps"] == 2
    score.add(gen_long, long)
    a, b = one, temporal_error(gen_long, long)
    out = score.result()
    assert out["mean"] == pytest.approx((2 * a["mean"] + 6 * b["mean"]) / 8)
    assert out["real_change"] == pytest.approx((2 * a["real_change"] + 6 * b["real_change"]) / 8)
    assert (out["videos"], out["steps"]) == (2, 8)
    worst_video = int(b["worst"] > a["worst"])
    assert out["worst"] == pytest.approx(max(a["worst"], b["worst"]))
    assert (out["worst_video"], out["worst_step"]) == (worst_video, (a, b)[worst_video]["worst_step"])


def test_temporal_score_frame_by_frame_equals_whole_videos():
    g = torch.Generator().manual_seed(3)
    videos = [torch.rand(n, 3, 12, 10, generator=g) for n in (4, 6, 3)]
    fakes = [(v + 0.1 * torch.rand(v.shape, generator=g)).clamp(0, 1) for v in videos]
    whole = TemporalScore()
    for fake, real in zip(fakes, videos):
        whole.add(fake, real)
    streamed = TemporalScore()
    fake, real = torch.cat(fakes), torch.cat(videos)  # (13, 3, H, W): the videos one after another
    names = [k for k, v in enumerate(videos) for _ in range(len(v))]
    for i in range(0, 13, 5):  # batches that cut across videos
        streamed.add_frames(fake[i:i + 5], real[i:i + 5], names[i:i + 5])
    a, b = whole.result(), streamed.result()
    assert a.keys() == b.keys() and a["videos"] == b["videos"] == 3 and a["steps"] == b["steps"] == 10
    for key in ("mean", "worst", "real_change"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)
    assert (a["worst_video"], a["worst_step"]) == (b["worst_video"], b["worst_step"])
