"""The appearance half of the task: does the generated person wear the source's clothes?

SSIM, PSNR and sharpness score structure: a model that stands in the right pose in the wrong
colours scores well on them. These measures see the other half, and need no weight files:

- **Part colour error.** Regions built from the *target's* keypoints (the torso quadrilateral
  shoulders-hips shrunk to 60 % around its centre; the middle 60 % of each upper arm and thigh,
  as a band of radius 0.08 torso lengths) give each body part's mean colour, in CIELAB (D65),
  where a Euclidean distance (CIE76 ΔE) is roughly perceptual: ΔE 2 is just visible, 10 is a
  different shade, 50 a different colour. The error is the ΔE between the generated image's part
  and the target photo's same part, averaged over the parts visible in the target.
  `torso_corr` is the Pearson correlation, over pairs, of the generated torso's mean RGB with the
  target's (mean over R, G, B): 0 means the colour is unrelated to the person's, 1 a perfect copy.
- **Two colour baselines** on the same pairs: *ignore the source* paints every part one fixed
  colour (the training targets' mean of that part), what a model that never looks at the source
  can do at best; *the source's own colour* takes each part from the source photo with the
  source's keypoints, what a model that copies the look would score.
- **Source sensitivity** (`source_sensitivity`): generate every pair twice, the second time with
  the source swapped for another pair's (pose and noise fixed); the mean absolute change of the
  output over the mean absolute difference of the two sources. 0: the source is ignored.

Used by evaluate.py (the table, the sweep) and tests/test_overfit.py (the model must follow a
swapped source). Run: python -m pytest -q tests/test_appearance.py

Shape letters: B batch, H W image height and width, P body parts, K = 18 keypoints.
"""
from __future__ import annotations

import numpy as np
import torch

# Body parts by OpenPose COCO-18 joint indices (poses.KEYPOINT_NAMES): the torso is the polygon
# r_shoulder, l_shoulder, l_hip, r_hip; a limb part is the segment between two joints.
TORSO = (2, 5, 11, 8)
LIMB_PARTS = {"r_upper_arm": (2, 3), "l_upper_arm": (5, 6), "r_thigh": (8, 9), "l_thigh": (11, 12)}
PARTS = ("torso", *LIMB_PARTS)
TORSO_SHRINK = 0.6   # keep 60 % of the torso around its centre: its edges blur into the arms
LIMB_SPAN = (0.2, 0.8)  # the middle of a limb: its ends overlap the torso and the next limb
LIMB_RADIUS = 0.08   # in torso lengths (neck to hips); the drawn sleeves are 0.13-0.15
MIN_PIXELS = 2       # a part with fewer pixels in the image is not counted
SIGN_HIP_DROP = 1.2  # an upper-body pose has no hips: they are put this many shoulder widths below the shoulders


# ----------------------------------------------------------------------------- colour space

# sRGB (D65) -> XYZ, and the D65 white point: IEC 61966-2-1 and CIE 15
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) sRGB in [0, 1] -> (..., 3) CIELAB (L in [0, 100]), in float64."""
    c = rgb.double().clamp(0, 1)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # undo the sRGB gamma
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE  # (..., 3), relative to white
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
                       dim=-1)  # (..., 3)


# ----------------------------------------------------------------------------- regions

def _visible(kp: np.ndarray, joints) -> bool:
    return all(kp[j, 0] >= 0 and kp[j, 1] >= 0 for j in joints)


def _torso_length(kp: np.ndarray) -> float | None:
    """Neck to the hips' middle, or 1.5 x the shoulder width when a hip or the neck is missing."""
    if _visible(kp, (1, 8, 11)):
        return float(np.hypot(*(kp[1] - (kp[8] + kp[11]) / 2)))
    if _visible(kp, (2, 5)):
        return 1.5 * float(np.hypot(*(kp[2] - kp[5])))
    return None


def _inside_polygon(xs: np.ndarray, ys: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule for pixel centres (xs, ys) (H, W) against a closed polygon (n, 2)."""
    inside = np.zeros(xs.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y1 > ys) != (y2 > ys)
        x_at = x1 + (ys - y1) * (x2 - x1) / ((y2 - y1) if y2 != y1 else 1e-9)
        inside ^= crosses & (xs < x_at)
    return inside


def _near_segment(xs, ys, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within `radius` of the middle span of segment a-b."""
    d = b - a
    t = ((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-9)  # (H, W): position along a-b
    px, py = a[0] + t.clip(*LIMB_SPAN) * d[0], a[1] + t.clip(*LIMB_SPAN) * d[1]
    return (t >= LIMB_SPAN[0]) & (t <= LIMB_SPAN[1]) & (np.hypot(xs - px, ys - py) <= radius)


def _as_coco18(kp: np.ndarray) -> np.ndarray:
    """(18 or 50, 2) -> (18, 2). The upper body with hands (sign language) keeps its first eight
    joints, which are COCO-18's, and gets hips below its shoulders: a signer's torso is the
    garment between them (persons.py draws it down to the frame's bottom edge); no thighs."""
    if len(kp) == 18:
        return kp
    out = np.full((18, 2), -1.0)
    out[:8] = kp[:8]
    if _visible(kp, (2, 5)):
        drop = SIGN_HIP_DROP * float(np.hypot(*(kp[2] - kp[5])))
        out[8], out[11] = kp[2] + (0, drop), kp[5] + (0, drop)  # under the right and left shoulders
    return out


def part_masks(keypoints, height: int, width: int) -> np.ndarray:
    """(18 or 50, 2) (x, y) keypoints in the H x W frame -> bool (P, H, W), one mask per PARTS
    entry; a part whose joints are missing (or that covers fewer than MIN_PIXELS) is all False."""
    kp = _as_coco18(np.asarray(keypoints, dtype=np.float64).reshape(-1, 2))  # (18, 2)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres, (H, W) each
    masks = np.zeros((len(PARTS), height, width), dtype=bool)
    length = _torso_length(kp)
    if length is None:
        return masks
    if _visible(kp, TORSO):
        corners = kp[list(TORSO)]  # (4, 2)
        centre = corners.mean(axis=0)
        masks[0] = _inside_polygon(xs, ys, centre + TORSO_SHRINK * (corners - centre))
    for i, (a, b) in enumerate(LIMB_PARTS.values(), start=1):
        if _visible(kp, (a, b)):
            masks[i] = _near_segment(xs, ys, kp[a], kp[b], max(LIMB_RADIUS * length, 0.75))
    masks[masks.reshape(len(PARTS), -1).sum(1) < MIN_PIXELS] = False
    return masks


def part_colours(images: torch.Tensor, keypoints) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean colour of each body part in each image.

    images (B, 3, H, W) in [0, 1]; keypoints: B arrays (18, 2) in the H x W frame.
    Returns lab (B, P, 3) (the mean of the pixels' CIELAB values), rgb (B, P, 3) in [0, 1], and
    visible (B, P) bool; the colours of an invisible part are 0.
    """
    b, _, h, w = images.shape
    masks = torch.from_numpy(np.stack([part_masks(kp, h, w) for kp in keypoints]))  # (B, P, H, W)
    pixels = images.detach().double().cpu().permute(0, 2, 3, 1)  # (B, H, W, 3)
    lab = srgb_to_lab(pixels)  # (B, H, W, 3)
    weights = masks.double()  # (B, P, H, W)
    count = weights.sum(dim=(2, 3)).clamp_min(1)[..., None]  # (B, P, 1)
    mean_lab = torch.einsum("bphw,bhwc->bpc", weights, lab) / count  # (B, P, 3)
    mean_rgb = torch.einsum("bphw,bhwc->bpc", weights, pixels) / count  # (B, P, 3)
    return mean_lab, mean_rgb, masks.flatten(2).any(-1)


# ----------------------------------------------------------------------------- scores

def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Correlation of two (N, C) colour lists, per channel, averaged; NaN where one is constant."""
    if a.shape[0] < 3:
        return float("nan")
    a, b = a - a.mean(0), b - b.mean(0)  # (N, C)
    denom = (a.norm(dim=0) * b.norm(dim=0))  # (C,)
    if bool((denom < 1e-9).any()):
        return float("nan")
    return float(((a * b).sum(0) / denom).mean())


class PartColourScore:
    """Accumulates (generated, target) part colours over batches; `result()` is the metrics dict.

    Each `add` takes the generated and the target colours of the same pairs, both measured in the
    target's regions (or, for the source's-own-colour baseline, the generated side in the source's
    regions); a part counts where the target's is visible (and the generated side's too).
    """

    def __init__(self):
        self.gen_lab, self.gen_rgb, self.tgt_lab, self.tgt_rgb, self.visible = [], [], [], [], []

    def add(self, gen: tuple, target: tuple):
        """gen, target: part_colours(...) results (lab, rgb, visible) of the same B pairs."""
        self.gen_lab.append(gen[0])
        self.gen_rgb.append(gen[1])
        self.tgt_lab.append(target[0])
        self.tgt_rgb.append(target[1])
        self.visible.append(gen[2] & target[2])  # (B, P): counted where both sides have the part

    def result(self) -> dict:
        if not self.visible:
            return {}
        g_lab, t_lab = torch.cat(self.gen_lab), torch.cat(self.tgt_lab)  # (N, P, 3)
        g_rgb, t_rgb, vis = torch.cat(self.gen_rgb), torch.cat(self.tgt_rgb), torch.cat(self.visible)
        delta_e = (g_lab - t_lab).norm(dim=-1)  # (N, P): CIE76
        torso = vis[:, 0]  # (N,)
        out = {"part_dE": float(delta_e[vis].mean()) if vis.any() else float("nan"),
               "torso_dE": float(delta_e[torso, 0].mean()) if torso.any() else float("nan"),
               "torso_rgb": float((g_rgb[torso, 0] - t_rgb[torso, 0]).norm(dim=-1).mean())
               if torso.any() else float("nan"),
               "torso_corr": pearson(g_rgb[torso, 0], t_rgb[torso, 0])}
        return {k: v for k, v in out.items() if v == v}  # drop NaN: a baseline without a correlation


def fixed_colour_like(colours: tuple, mean_lab: torch.Tensor, mean_rgb: torch.Tensor) -> tuple:
    """The 'ignore the source' generator's part colours: the same (P, 3) colours for every pair,
    shaped like part_colours(...) of B pairs and visible wherever those are."""
    b = colours[0].shape[0]
    return mean_lab.expand(b, -1, -1), mean_rgb.expand(b, -1, -1), colours[2]


def mean_part_colours(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 3) mean Lab and RGB of each part over (images, keypoints) batches (the training targets)."""
    lab_sum = rgb_sum = count = 0
    for images, keypoints in batches:
        lab, rgb, vis = part_colours(images, keypoints)
        weight = vis.double()[..., None]  # (B, P, 1)
        lab_sum = lab_sum + (lab * weight).sum(0)  # (P, 3)
        rgb_sum = rgb_sum + (rgb * weight).sum(0)  # (P, 3)
        count = count + weight.sum(0)  # (P, 1)
    count = torch.as_tensor(count).clamp_min(1)
    return lab_sum / count, rgb_sum / count  # (P, 3) each


def swap_order(n: int) -> torch.Tensor:
    """Each pair i takes the source of pair (i + n // 2) mod n: a permutation without fixed points
    (for n >= 2) that pairs far-apart items, so two swapped sources are rarely the same person."""
    return (torch.arange(n) + max(n // 2, 1)) % n  # (n,)


@torch.no_grad()
def source_sensitivity(generate, source: torch.Tensor, pose: torch.Tensor, source_keypoints=None) -> dict:
    """How much the output follows the source: generate(source, pose) -> images in [-1, 1] must use
    the same noise on every call. With source_keypoints (B, K, 2) it is generate(source, pose,
    source_keypoints) and a swapped source brings its own pose along (the model may read both).
    Returns {'src_sens': mean |out - out_swapped| / mean |source - source_swapped|, 'src_change',
    'out_change'} (both in [0, 1] image units)."""
    order = swap_order(source.shape[0])
    extra = () if source_keypoints is None else (source_keypoints,)
    out = generate(source, pose, *extra).float()
    swapped = generate(source[order], pose, *(k[order] for k in extra)).float()
    out_change = float((out - swapped).abs().mean() / 2)  # /2: [-1, 1] -> [0, 1] units
    src_change = float((source - source[order]).abs().mean() / 2)
    return {"src_sens": out_change / max(src_change, 1e-12), "src_change": src_change, "out_change": out_change}
