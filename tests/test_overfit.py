"""Both methods must DRAW, and draw the SOURCE's person, not just lower a loss: overfit a handful of
pairs, generate them back through the real sampling path (conditions, guidance, EMA weights, VAE
decode), score them, then swap every source for another person's and require the output to follow.

The handful: two training persons (plain tops of different colours) drawn in the SAME three real
poses, so that a target pose does not tell whose clothes to draw: only the source does. A model that
ignores the source (RPFM before the source encoder's norms were fixed, source_encoder.group_norm) can memorise
the poses but not the colours, and fails the swap check.

Two checks, each with a wide margin (measured 2026-12-01 and 2026-12-02 on the shared 2-core CPU, seed 0, listed beside
each threshold; the old 120-step version of the first check drew 0.75 on one machine and 0.60 on
another, so the margins below are several times that machine-to-machine spread; 400 steps instead of
120 put the models well into memorising, where rounding differences matter least):
  1. drawn back: SSIM of the generated targets above the copy-the-source baseline;
  2. follows the source: with the sources swapped, the output is closer to the OTHER person in the
     target pose (a training target too) than to the pair's own target, in mean absolute pixels, for
     the median pair by a wide margin and for three pairs in four at all.

This is also the test that would have caught FPDM drawing coloured noise while its loss fell (with
eps-prediction on the tiny preset, `--prediction eps`). See it fail:

    OVERFIT_FPDM_PREDICTION=eps python -m pytest -q -s tests/test_overfit.py
    python -m pytest -q -s tests/test_overfit.py      (about 3 minutes on 2 idle CPU cores)
"""
import os

import numpy as np
import pytest
import torch

import data
import deepfashion
import poses
import metrics
import pipeline
import train

TRAIN = ["--image-size", "32", "--batch-size", "4", "--vae-batch-size", "4", "--num-workers", "0", "--no-flip",
         "--warmup", "20", "--vae-steps", "150", "--fusion-steps", "20", "--steps", "400", "--log-every", "1000",
         "--sample-every", "100000", "--ckpt-every", "100000", "--threads", "1"]
# plain tops: blue, pink, teal (persons.sample_appearance at seed 0); one of the three lands in the test split
ITEMS = ("fasionMENTees_Tanksid0000003", "fasionMENTees_Tanksid0000007", "fasionMENTees_Tanksid0000005")
VIEWS = ("1front", "2side", "3back")
SSIM_MARGIN = 0.2   # generated SSIM above copy-the-source by at least this
SWAP_MEDIAN = 0.8   # swapped output: distance to the other person / to its own target, median below this
SWAP_MOST = 1.0     # ... and three pairs in four closer to the other person than to their own target


def write_annotations(path):
    """Three items in the same three real, complete poses, as a csv-layout annotation file."""
    real = deepfashion.read_keypoint_csv(deepfashion.BUNDLED_ANNOTATIONS)
    complete = [kp for _, kp in sorted(real.items()) if not poses.is_missing(kp).any()][:3]
    with open(path, "w", encoding="utf-8") as f:
        f.write("name:keypoints_y:keypoints_x\n")
        for item in ITEMS:
            for view, kp in zip(VIEWS, complete):
                kp = np.round(kp).astype(int)
                f.write(f"{item}_{view}.jpg: {kp[:, 1].tolist()}: {kp[:, 0].tolist()}\n")
    return path


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    """(data root, a VAE trained on it): both methods share the VAE, as in the main job."""
    root = tmp_path_factory.mktemp("handful")
    annotations = write_annotations(root / "fashion-resize-annotation-handful.csv")
    data.synthesize(root / "data", size=(64, 44), seed=0, annotations=str(annotations))
    train.run(train.parse_config(["--method", "vae", "--data", str(root / "data"), "--out", str(root), *TRAIN]))
    return root / "data", root / "vae.pt"


def other_person(name: str, items: list) -> str:
    """The same view of the other training person."""
    item = deepfashion.item_id(name)
    other = next(i for i in items if i != item)
    return name.replace(item, other)


def generate(gen, pairs, sources):
    torch.manual_seed(0)
    noise = gen.noise(len(sources), "cpu", torch.Generator().manual_seed(0))
    items = [pairs.load_item(i) for i in range(len(pairs))]
    pose = torch.stack([it["target_pose"] for it in items])
    # the other person's source is the same view, so it stands in the same pose as the pair's own
    keypoints = tuple(torch.stack([it[k] for it in items]) for k in ("source_keypoints", "target_keypoints"))
    images, nfe = pipeline.generate(gen, sources, pose, pipeline.sampling_for(gen.process),
                                    pipeline.PhaseTimer(torch.device("cpu")), "fp32", noise=noise, keypoints=keypoints)
    return (images.clamp(-1, 1) + 1) / 2, nfe  # (B, 3, S, S) in [0, 1]


def draw_back_and_swap(ckpt, root) -> dict:
    gen = pipeline.Generator.from_checkpoint(ckpt, use_ema=True, device="cpu")
    pairs = data.PairDataset(root, "train", gen.image_size)
    items = sorted({deepfashion.item_id(s) for s, _ in pairs.pairs})
    assert len(items) == 2, items
    load = lambda names: torch.stack([pairs.load_image(n) for n in names])  # noqa: E731  (B, 3, S, S)
    source, target = load([s for s, _ in pairs.pairs]), (load([t for _, t in pairs.pairs]) + 1) / 2
    other_target = (load([other_person(t, items) for _, t in pairs.pairs]) + 1) / 2
    drawn, nfe = generate(gen, pairs, source)
    swapped, _ = generate(gen, pairs, load([other_person(s, items) for s, _ in pairs.pairs]))
    return {"nfe": nfe, "ssim": metrics.ssim(drawn, target).mean().item(),
            "copy_ssim": metrics.ssim((source + 1) / 2, target).mean().item(),
            # per pair: distance of the swapped output to the other person's target over that to its own
            "swap_ratio": ((swapped - other_target).abs().flatten(1).mean(1) /
                           (swapped - target).abs().flatten(1).mean(1)).tolist()}


@pytest.mark.parametrize("method", ["rpfm", "fpdm"])
def test_overfit_pairs_are_drawn_back_in_the_sources_clothes(method, handful, tmp_path):
    root, vae = handful
    prediction = os.environ.get("OVERFIT_FPDM_PREDICTION", "v")  # eps: the objective that drew noise
    train.run(train.parse_config(["--method", method, "--data", str(root), "--out", str(tmp_path),
                                  "--vae-ckpt", str(vae), "--prediction", prediction, *TRAIN]))
    r = draw_back_and_swap(str(tmp_path / f"{method}.pt"), root)
    assert r["nfe"] == {"rpfm": 20, "fpdm": 40}[method]  # each at its release setting, guidance on
    ratios = sorted(r["swap_ratio"])
    print(f"{method}: SSIM {r['ssim']:.3f} (copy-source {r['copy_ssim']:.3f}); swapped output's distance to "
          f"the other person over its own target: median {np.median(ratios):.2f}, worst {ratios[-1]:.2f}")
    # measured 2026-12-02 (the pose painted in the source's colours): SSIM 0.781 (rpfm), 0.764 (fpdm) against
    # copy-source 0.234: margins 0.55 and 0.53 over the 0.2 bar; swap ratio median 0.52 / 0.47 (bar 0.8), upper
    # quartile 0.59 / 0.53 (bar 1.0: three pairs in four closer to the other person than to their own target).
    # The single worst pair is no bar: it moved from 0.67 to 1.01 with that change, and to 2.02 with a
    # better VAE that lifted the median to 0.26. At 160 steps RPFM (before the painted colours) drew the pairs
    # back (SSIM 0.61) but did not follow a swapped source (median 1.01): the check that catches it.
    assert r["ssim"] > r["copy_ssim"] + SSIM_MARGIN, f"{method}: SSIM {r['ssim']:.3f} vs copy {r['copy_ssim']:.3f}"
    assert np.median(ratios) < SWAP_MEDIAN and np.quantile(ratios, 0.75) < SWAP_MOST, f"{method}: swap ratios {ratios}"


