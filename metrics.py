"""The measures: SSIM, PSNR, sharpness, LPIPS, FID, Hand SSIM and temporal error, as papers score.

Pose-guided person image synthesis papers (PATN, NTED, CASD, PIDM, CFLD, FPDM, RPFM) compare a
generated image with the ground-truth target photo at 256x176 (or 512x352). This file holds the
measures themselves, each checked against its reference implementation in tests/test_evaluate.py;
scoring.py applies them to files, evaluate.py is the command line, and appearance.py holds the
measures of the task's other half (the source's colours).

- SSIM (Wang et al. 2004): local means, variances and covariance under an 11x11 Gaussian window
  (sigma 1.5) on [0, 1] images, averaged over the valid window positions and the channels. This is
  the convention of scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`, written here from the formula.
- PSNR on [0, 1]: 10 log10(1 / MSE), per image.
- Sharpness: the 3x3 Laplacian's variance of the generated images over that of their real
  targets (1.0 = as sharp as the photos). SSIM and PSNR reward blur; this column shows it.
- LPIPS (Zhang et al. 2018, arXiv 1801.03924): AlexNet or VGG16 features at five layers,
  unit-normalised along channels, squared difference, a learned non-negative 1x1 "linear head"
  per layer, spatial mean, summed over layers. Lower is more similar.
- FID (Heusel et al. 2017, arXiv 1706.08500): the Frechet distance between Gaussians fitted to
  InceptionV3 (Szegedy et al., arXiv 1512.00567) 2048-d pool features of two image sets, in
  float64, with a matrix square root that stays real on (near-)singular covariances.

Sign language (FPDM's PHOENIX-2014T experiment, its Table 4; keypoints (50, 2) as in
assets/sign/README.md and poses.SIGN50) adds two:
- Hand SSIM (the hand measure of Saunders et al.'s sign-language video work, SignGAN 2020): SSIM on a
  square crop centred on each hand's middle-finger knuckle (hand point 9: joints 17 and 38), 60x60 at
  PHOENIX's 260x210 frame, the side scaled with the image height. Whole-frame SSIM is dominated by
  the still background and torso; the hands carry the signs and cover a small part of the frame.
  The crops are cut at the TARGET's knuckles in both images; a hand missing there is skipped, so an
  image contributes 0, 1 or 2 crops, and a set's Hand SSIM is the mean over all its crops.
- Temporal error (what a ground-truth video makes possible): per step t, mean |d_g - d_r| with
  d_g = g[t+1] - g[t] and d_r = r[t+1] - r[t], over pixels and channels; the mean over steps and the
  worst step. The true video scores 0; a frozen output scores mean |d_r| (reported beside it as
  real_change, the figure a result must beat); a shimmering one its shimmer. Per-frame SSIM hardly
  sees either failure: a frozen first frame can score well on every frame of a slow sign.

Weights never download here: LPIPS and FID load local files or torchvision's cache under
TORCH_HOME; when they are absent a one-line note says so and the metric is left out. The files:
  --lpips-weights FILE    the LPIPS heads, alex.pth / vgg.pth of the `lpips` package (found there
                          without the flag when that package is installed)
  --lpips-backbone FILE   torchvision's alexnet-owt-7be5be79.pth / vgg16-397923af.pth
  --fid-weights FILE      pytorch-fid's pt_inception-2015-12-05-6726825d.pth (the one that gives
                          FIDs comparable with papers'), or torchvision's Inception V3 file
To fill torchvision's cache once on a machine that is online: python -c "import torchvision.models
as m; m.alexnet(weights='DEFAULT'); m.inception_v3(weights='DEFAULT')". Compare FIDs only at equal
image counts.

Tests: python -m pytest -q tests/test_evaluate.py tests/test_sign_metrics.py

Shape letters: B batch, C channels (3 for images), H W height width, N images in a set (or hand
crops), D feature dimension (2048 for Inception), K window size, T video frames, s crop side.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


# ----------------------------------------------------------------------------- SSIM and PSNR

def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise ValueError unless a and b are equal-shaped (B, 3, H, W) images in [0, 1]."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    lo, hi = min(a.min().item(), b.min().item()), max(a.max().item(), b.max().item())
    # note: the commonest evaluation bug is feeding [-1, 1] images; a tolerance allows rounding
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"expected images in [0, 1], got values in [{lo:.3f}, {hi:.3f}] "
                         "(convert [-1, 1] images with (x + 1) / 2)")


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The 1-D normalised Gaussian (K,) that SSIM uses separably along H and W (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()  # (K,)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (B,) of (B, C, H, W) images in [0, 1].

    Local statistics come from a 'valid' Gaussian filter: skimage filters with reflection and then
    crops (window - 1) / 2 pixels at each border, which leaves exactly the valid positions.
    """
    _check_pair(a, b)
    if min(a.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {tuple(a.shape[-2:])}")
    dtype = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    c = a.shape[1]
    g = gaussian_window(window, sigma).to(device=a.device, dtype=dtype)
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)  # (B, 5C, H, W)
    # a separable filter: one grouped conv along W, then one along H, every channel on its own
    stacked = F.conv2d(stacked, g.view(1, 1, 1, -1).expand(5 * c, 1, 1, window), groups=5 * c)
    stacked = F.conv2d(stacked, g.view(1, 1, -1, 1).expand(5 * c, 1, window, 1), groups=5 * c)
    mu_a, mu_b, e_aa, e_bb, e_ab = stacked.chunk(5, dim=1)  # each (B, C, H-K+1, W-K+1)
    var_a, var_b, cov = e_aa - mu_a ** 2, e_bb - mu_b ** 2, e_ab - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2  # K1, K2 of Wang et al. 2004
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))  # (B,)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR (B,) in dB of (B, C, H, W) images in [0, 1]."""
    _check_pair(a, b)
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))  # (B,)
    # note: identical images have MSE 0 (infinite PSNR); a floor of 1e-10 caps them at 100 dB so
    # that a mean over a folder stays finite
    return (10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10))).to(a.dtype)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as PIL's convert("L")


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance (B,) of the 3x3 Laplacian of the luma of (B, 3, H, W) images in [0, 1].

    High for edges and texture, low for blur. The sharpness column is its mean over the generated
    images divided by its mean over their real targets: 1.0 is as sharp as the photos. note: SSIM
    and PSNR reward a blurry average over a sharp guess that is slightly off, so a model can win
    them by blurring; this column shows it.
    """
    luma = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    gray = (images * luma).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=images.dtype,
                          device=images.device).view(1, 1, 3, 3)
    return F.conv2d(gray, kernel).flatten(1).var(dim=1)  # (B,) over the valid (H-2) x (W-2) positions


# ----------------------------------------------------------------------------- sign language: Hand SSIM

HAND_KNUCKLES = (17, 38)  # middle-finger knuckle (hand point 9) of the left (8 + 9) and right (29 + 9) hand
HAND_CROP = 60 / 260  # the crop side over the image height: 60 px in PHOENIX's 260 x 210 frame


def hand_crop_side(height: int) -> int:
    """The Hand SSIM crop side at an image height: round(60 * H / 260), 60 at 260 and 30 at 130."""
    side = round(HAND_CROP * height)  # note: 60 H / 260 is never k + 1/2 for an integer H: no ties
    if side < 3:
        raise ValueError(f"Hand SSIM needs images at least 11 px high (a 3 px crop), got {height}")
    return side


def hand_window(side: int) -> tuple[int, float]:
    """SSIM's window and sigma for crops of this side: the usual 11 and 1.5 when they fit.

    note: crops under 11 px (images under 46 px high, e.g. the 32 px test models) are smaller than
    SSIM's window; they get the largest odd window that fits, its sigma shrunk with it (1.5 K / 11), so
    the filter is the usual Gaussian scaled down with the image rather than one cut off at the crop.
    """
    if side >= 11:
        return 11, 1.5
    window = side if side % 2 else side - 1
    return window, 1.5 * window / 11


def _sign_keypoints(keypoints) -> torch.Tensor:
    """(B, 50, 2) float64 CPU keypoints from a (B, 50, 2) tensor/array or a list of (50, 2) arrays."""
    if len(keypoints) == 0:
        return torch.zeros(0, 50, 2, dtype=torch.float64)
    kp = torch.stack([torch.as_tensor(k, dtype=torch.float64).cpu() for k in keypoints])  # (B, 50, 2)
    if kp.shape[1:] != (50, 2):
        raise ValueError(f"Hand SSIM expects (50, 2) upper-body-and-hands keypoints per image, got "
                         f"{tuple(kp.shape[1:])}")
    return kp


def hand_boxes(keypoints, height: int, width: int) -> list:
    """Each image's crop boxes: boxes[i][hand] = (top, left, side) in the H x W frame, or None.

    hand 0 is the left hand (joints 8-28), 1 the right (29-49). The knuckle's pixel (x and y rounded)
    is the crop's centre pixel, row and column side // 2 of the crop (for an even side, the lower right
    of the middle four). None where the knuckle is missing (a negative coordinate) or outside the frame.
    note: near a border the box reaches past the image (top or left negative, or beyond H or W) instead
    of shifting inwards: a shifted box would put the knuckle off-centre, so the same hand shape would be
    scored on a different window according to where it stands; hand_crops pads the images to fill it.
    """
    side = hand_crop_side(height)
    boxes = []
    for points in _sign_keypoints(keypoints):  # (50, 2)
        row = []
        for joint in HAND_KNUCKLES:
            x, y = float(points[joint, 0]), float(points[joint, 1])
            if not (0 <= x < width and 0 <= y < height):  # also False for NaN
                row.append(None)
                continue
            col, line = min(math.floor(x + 0.5), width - 1), min(math.floor(y + 0.5), height - 1)
            row.append((line - side // 2, col - side // 2, side))
        boxes.append(row)
    return boxes


def hand_crops(images: torch.Tensor, keypoints) -> tuple[torch.Tensor, torch.Tensor]:
    """The hand crops (N, 3, s, s) of images (B, 3, H, W) at hand_boxes(keypoints, H, W), and `which`
    (N, 2) long on the CPU: each crop's image index and hand (0 left, 1 right), image by image.

    Cut the generated and the real images with the same (the TARGET's) keypoints, so both crops cover
    the same place. note: the images are replicate-padded by side // 2, enough for any box centred in
    the image (it ends at most side - 1 - side // 2 <= side // 2 past the last row). Replicate, not
    zeros: a constant pad is identical in both images and would count as perfect structure, while
    replicating keeps comparing each image's own border pixels.
    """
    b, c, h, w = images.shape
    boxes = hand_boxes(keypoints, h, w)
    if len(boxes) != b:
        raise ValueError(f"hand_crops: {b} images but {len(boxes)} keypoint sets")
    side = hand_crop_side(h)
    pad = side // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")  # (B, C, H + 2 pad, W + 2 pad)
    crops, which = [], []
    for i, row in enumerate(boxes):
        for hand, box in enumerate(row):
            if box is not None:
                top, left = box[0] + pad, box[1] + pad  # into the padded frame
                crops.append(padded[i, :, top:top + side, left:left + side])  # (C, s, s)
                which.append((i, hand))
    if not crops:
        return images.new_zeros(0, c, side, side), torch.zeros(0, 2, dtype=torch.long)
    return torch.stack(crops), torch.tensor(which, dtype=torch.long)  # (N, C, s, s), (N, 2)


def hand_ssim(generated: torch.Tensor, real: torch.Tensor, keypoints) -> tuple[torch.Tensor, int]:
    """Per-crop Hand SSIM (N,) and the count N of crops scored.

    generated, real: (B, 3, H, W) in [0, 1] (a video's T frames are a batch too); keypoints: the
    TARGET's, (B, 50, 2) or B arrays (50, 2), (x, y) pixels in the H x W frame, negative = missing.
    Both hands of every image count where the target shows their knuckle (0, 1 or 2 crops an image);
    a set's Hand SSIM is the mean of all its crops' values, so keep the values, not per-batch means.
    """
    _check_pair(generated, real)
    gen_crops, _ = hand_crops(generated, keypoints)  # (N, 3, s, s)
    real_crops, _ = hand_crops(real, keypoints)  # (N, 3, s, s)
    if gen_crops.shape[0] == 0:
        return generated.new_zeros(0), 0
    window, sigma = hand_window(gen_crops.shape[-1])
    values = ssim(gen_crops, real_crops, window=window, sigma=sigma)  # (N,)
    return values, int(values.shape[0])


# ----------------------------------------------------------------------------- sign language: temporal error

def _step_errors(generated: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step t: mean |d_g - d_r| (T-1,) and the real change mean |d_r| (T-1,), over pixels and channels."""
    _check_pair(generated, real)
    if generated.shape[0] < 2:
        raise ValueError(f"temporal error needs videos of at least 2 frames, got {generated.shape[0]}")
    dtype = generated.dtype if generated.dtype in (torch.float32, torch.float64) else torch.float32
    g, r = generated.to(dtype), real.to(dtype)
    d_g, d_r = g[1:] - g[:-1], r[1:] - r[:-1]  # (T-1, 3, H, W) each
    return (d_g - d_r).abs().mean(dim=(1, 2, 3)), d_r.abs().mean(dim=(1, 2, 3))  # (T-1,), (T-1,)


def temporal_error(generated: torch.Tensor, real: torch.Tensor) -> dict:
    """How far a generated video's frame-to-frame change is from its real video's, [0, 1] scale.

    generated, real: (T, 3, H, W) in [0, 1]. Returns mean (over the T - 1 steps), worst (the largest
    step's error), worst_step (t of that step, the change from frame t to t + 1, 0-based) and
    real_change (mean |d_r|: what a frozen output scores, the reference to read the mean against).
    note: streaming.video_flicker is this quantity on lists of [-1, 1] frames; its worst frame is
    worst_step + 1.
    """
    errors, real_change = _step_errors(generated, real)  # (T-1,) each
    worst = int(errors.argmax())
    return {"mean": float(errors.mean()), "worst": float(errors[worst]), "worst_step": worst,
            "real_change": float(real_change.mean())}


class TemporalScore:
    """Accumulates temporal_error over videos, each weighted by its step count T - 1 (every step of
    every video counts once), so long and short videos mix as one long sequence of steps would.

    Whole videos go in with `add`; `add_frames` takes them batch by batch in frame order (as a scorer
    reads files), keeping only each video's last frame, so no video is ever held in memory whole."""

    def __init__(self):
        self.error_sum, self.real_sum, self.steps, self.videos = 0.0, 0.0, 0, 0
        self.worst = (-1.0, -1, -1)  # (error, video index, step) of the worst step seen
        self.last = None  # add_frames: (video, its step count so far, last generated (3, H, W), last real)

    def add(self, generated: torch.Tensor, real: torch.Tensor) -> None:
        """generated, real: one video pair (T, 3, H, W) in [0, 1]."""
        self.videos += 1
        self._count(*_step_errors(generated, real), first_step=0)

    def add_frames(self, generated: torch.Tensor, real: torch.Tensor, videos: list) -> None:
        """generated, real (B, 3, H, W) in [0, 1]: the next frames, `videos` the video of each, in order."""
        for i, video in enumerate(videos):
            if self.last is not None and self.last[0] == video:
                _, step, g0, r0 = self.last
                self.videos += step == 0  # a video counts from its first step, as `add` needs two frames
                errors, real_change = _step_errors(torch.stack([g0, generated[i]]), torch.stack([r0, real[i]]))
                self._count(errors, real_change, first_step=step)
                self.last = (video, step + 1, generated[i], real[i])
            else:  # a new video: its first frame has no step before it
                self.last = (video, 0, generated[i], real[i])

    def _count(self, errors: torch.Tensor, real_change: torch.Tensor, first_step: int) -> None:
        step = int(errors.argmax())
        if float(errors[step]) > self.worst[0]:
            self.worst = (float(errors[step]), self.videos - 1, first_step + step)
        self.error_sum += float(errors.sum())
        self.real_sum += float(real_change.sum())
        self.steps += errors.shape[0]

    def result(self) -> dict:
        """mean, worst, worst_video, worst_step, real_change, videos, steps; {} before any video."""
        if not self.steps:
            return {}
        return {"mean": self.error_sum / self.steps, "worst": self.worst[0], "worst_video": self.worst[1],
                "worst_step": self.worst[2], "real_change": self.real_sum / self.steps,
                "videos": self.videos, "steps": self.steps}


# ----------------------------------------------------------------------------- Frechet distance

def _sym_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix; rounding's tiny negative eigenvalues count as 0."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T  # (D, D)


def _as_gaussian(mu, sigma, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean (D,) and covariance (D, D), checked to match."""
    mu = torch.as_tensor(mu, dtype=torch.float64).flatten()  # (D,)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{what}: expected a mean (D,) and a covariance (D, D), got {tuple(mu.shape)} "
                         f"and {tuple(sigma.shape)}")
    return mu, sigma


def _frechet_value(mu1, trace1, mu2, trace2, tr_covmean) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), clamped at 0."""
    if mu1.shape != mu2.shape:
        raise ValueError(f"Frechet distance: feature dimensions differ, {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    value = diff @ diff + trace1 + trace2 - 2 * tr_covmean
    return max(float(value), 0.0)  # a squared distance: a tiny negative is rounding


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
    S1 S2 is not symmetric, but it has the same eigenvalues as the symmetric PSD matrix
    M = S1^(1/2) S2 S1^(1/2) (AB and BA share eigenvalues), so tr((S1 S2)^(1/2)) is the sum of the
    square roots of M's eigenvalues. Two symmetric eigen-decompositions give it with real
    arithmetic throughout. pytorch-fid instead calls scipy's general sqrtm on S1 S2, which turns
    complex or infinite when the product is singular (fewer images than 2048 dimensions), and then
    retries with 1e-6 * I added to both covariances; here singular covariances need no offset.
    """
    (mu1, s1), (mu2, s2) = _as_gaussian(mu1, sigma1, "set 1"), _as_gaussian(mu2, sigma2, "set 2")
    if s1.shape != s2.shape:
        raise ValueError(f"Frechet distance: covariances {tuple(s1.shape)} and {tuple(s2.shape)} differ")
    root1 = _sym_sqrt(s1)
    m = root1 @ s2 @ root1  # (D, D), symmetric PSD up to rounding
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return _frechet_value(mu1, torch.trace(s1), mu2, torch.trace(s2), tr_covmean)


def frechet_distance_to_features(features, mu2, sigma2) -> float:
    """frechet_distance between the Gaussian fitted to features (N, D) and N(mu2, sigma2).

    With N <= D the fitted covariance S1 = A^T A (A the centred features / sqrt(N - 1), (N, D))
    has rank < N, and S1 S2 = A^T (A S2) shares its non-zero eigenvalues with the N x N symmetric
    PSD matrix A S2 A^T, so the trace term costs one N x N eigen-decomposition instead of two
    D x D ones (seconds on a CPU for D = 2048). The value is the same; larger N takes the D route.
    """
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"Frechet distance needs (N, D) features with N >= 2, got {tuple(f.shape)}")
    if f.shape[0] > f.shape[1]:
        return frechet_distance(*feature_stats(f), mu2, sigma2)
    mu2, s2 = _as_gaussian(mu2, sigma2, "reference")
    mu1 = f.mean(dim=0)  # (D,)
    a = (f - mu1) / math.sqrt(f.shape[0] - 1)  # (N, D)
    small = a @ s2 @ a.T  # (N, N)
    tr_covmean = torch.linalg.eigvalsh((small + small.T) / 2).clamp_min(0).sqrt().sum()
    return _frechet_value(mu1, (a * a).sum(), mu2, torch.trace(s2), tr_covmean)


def feature_stats(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D) with N >= 2."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N, D) features with N >= 2, got {tuple(f.shape)}")
    mu = f.mean(dim=0)  # (D,)
    centred = f - mu  # (N, D)
    return mu, centred.T @ centred / (f.shape[0] - 1)  # (D,), (D, D)


# ----------------------------------------------------------------------------- weight files

def _load_state(path, what: str) -> dict:
    """A state dict read from a local file; a missing or unreadable file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises RuntimeError / UnpicklingError on a bad file
        raise ValueError(f"{what}: could not read {path} as a PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def torchvision_cache_path(weights_enum) -> Path:
    """Where torchvision caches a weight file: $TORCH_HOME/hub/checkpoints/<file name of its URL>."""
    name = Path(urlparse(weights_enum.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _cached_torchvision_state(weights_enum, what: str, flag: str) -> dict:
    """Read torchvision weights from its cache only: this script never downloads."""
    path = torchvision_cache_path(weights_enum)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found in torchvision's cache ({path}, set by TORCH_HOME); fetch them once "
            f"online with torchvision.models weights={weights_enum}, or pass {flag} PATH")
    return _load_state(path, what)


# ----------------------------------------------------------------------------- LPIPS

# name -> (torchvision constructor, weights, slice ends in .features, channels per layer,
# smallest image side whose pooled maps stay non-empty down to the last layer)
# AlexNet: relu1..relu5; VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the LPIPS layers)
LPIPS_NETS = {
    "alex": (torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
             (2, 5, 8, 10, 12), (64, 192, 384, 256, 256), 31),
    "vgg": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1,
            (4, 9, 16, 23, 30), (64, 128, 256, 512, 512), 16),
}


def default_lpips_heads_path(net: str) -> Optional[Path]:
    """The linear heads shipped inside the `lpips` pip package (weights/v0.1/<net>.pth), if installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"


def _features_only(build) -> nn.Sequential:
    """The convolutional `.features` of a torchvision AlexNet/VGG16, randomly initialised.

    The model is built on the meta device and only its features materialised: this skips
    initialising the classifier (50M parameters for AlexNet, 120M for VGG16) that LPIPS throws away.
    """
    with torch.device("meta"):
        features = build(weights=None).features
    features = features.to_empty(device="cpu")
    for module in features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return features


class LPIPS(nn.Module):
    """LPIPS v0.1 distance (B,) between (B, 3, H, W) images in [0, 1]; lower is more similar.

    heads_path: the lpips-package file (keys lin0.model.1.weight ... lin4.model.1.weight);
    None looks inside an installed `lpips` package. backbone_path: a torchvision AlexNet/VGG16
    state dict; None reads torchvision's cache. random_init=True reads no file at all: random
    backbone and random non-negative heads, for tests only (the numbers mean nothing).
    """

    def __init__(self, net: str = "alex", heads_path=None, backbone_path=None, random_init: bool = False):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"unknown LPIPS net {net!r}; choices: {sorted(LPIPS_NETS)}")
        build, weights, ends, channels, self.min_side = LPIPS_NETS[net]
        # files first: a missing file fails in milliseconds, before any network is built
        heads = None if random_init else self._read_heads(net, heads_path, channels)
        backbone = None if random_init else self._read_backbone(weights, backbone_path)
        features = _features_only(build)
        if backbone is not None:
            try:
                features.load_state_dict(backbone)
            except RuntimeError as exc:
                raise ValueError(f"LPIPS backbone weights: keys or shapes do not match torchvision's "
                                 f"{net} ({exc})") from exc
        starts = (0,) + ends[:-1]
        self.slices = nn.ModuleList(features[s:e] for s, e in zip(starts, ends))
        self.heads = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in channels)
        for head, weight in zip(self.heads, heads or [None] * len(channels)):
            if weight is None:  # random, but non-negative like trained heads, so the distance is >= 0
                nn.init.uniform_(head.weight, 0.0, 1.0 / head.in_channels)
            else:
                head.weight.data.copy_(weight)
        # ScalingLayer constants of LPIPS v0.1: they map [-1, 1] inputs to ImageNet statistics
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.net = net
        self.requires_grad_(False).eval()

    @staticmethod
    def _read_backbone(weights, backbone_path) -> dict:
        what = "LPIPS backbone weights"
        state = (_load_state(backbone_path, what) if backbone_path is not None
                 else _cached_torchvision_state(weights, what, "--lpips-backbone"))
        # a whole-model torchvision file has 'features.0.weight'; a features-only file '0.weight'
        if any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        return state

    @staticmethod
    def _read_heads(net: str, heads_path, channels) -> list:
        path = heads_path if heads_path is not None else default_lpips_heads_path(net)
        if path is None:
            raise FileNotFoundError(f"LPIPS linear heads not found (no lpips package installed); pass "
                                    f"--lpips-weights PATH to weights/v0.1/{net}.pth of the lpips package")
        state = _load_state(path, "LPIPS linear heads")
        weights = []
        for k, ch in enumerate(channels):
            key = f"lin{k}.model.1.weight"  # lpips's NetLinLayer: Sequential(Dropout, Conv2d)
            if key not in state or tuple(state[key].shape) != (1, ch, 1, 1):
                raise ValueError(f"LPIPS linear heads: {path} lacks {key} of shape (1, {ch}, 1, 1) "
                                 f"(is it the {net!r} file?); keys: {sorted(state)[:6]}")
            weights.append(state[key])
        return weights

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if min(a.shape[-2:]) < self.min_side:
            raise ValueError(f"LPIPS ({self.net}) needs images of at least {self.min_side}x{self.min_side}, "
                             f"got {tuple(a.shape[-2:])}")
        b_size = a.shape[0]
        x = torch.cat([a, b]) * 2 - 1  # (2B, 3, H, W) in [-1, 1], the range LPIPS expects
        x = (x - self.shift) / self.scale
        total = a.new_zeros(b_size)
        for block, head in zip(self.slices, self.heads):
            x = block(x)  # (2B, C_l, H_l, W_l)
            unit = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit length along C
            diff = (unit[:b_size] - unit[b_size:]) ** 2  # (B, C_l, H_l, W_l)
            total = total + head(diff).mean(dim=(1, 2, 3))  # (B,)
        return total


# ----------------------------------------------------------------------------- Inception (FID)

class _TFPoolBranch(nn.Module):
    """An Inception block with its pooling branch computed as the TF FID network computes it.

    The TF Inception graph behind the published FID (pytorch-fid's pt_inception-2015-12-05) differs
    from torchvision's blocks in one place: the pool branch averages without counting the zero
    padding, and in the last block (Mixed_7c) it max-pools. The pool branch is the last
    `branch_pool.conv.out_channels` output channels in every block, so those are recomputed.
    """

    def __init__(self, block: nn.Module, max_pool: bool):
        super().__init__()
        self.block, self.max_pool = block, max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)  # (B, C_out, H, W)
        k = self.block.branch_pool.conv.out_channels
        pooled = (F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool
                  else F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([out[:, :-k], self.block.branch_pool(pooled)], dim=1)  # (B, C_out, H, W)


class InceptionFeatures(nn.Module):
    """InceptionV3 2048-d pool features (B, 2048) of (B, 3, H, W) images in [0, 1].

    weights_path: a local state dict, either torchvision's inception_v3 file or pytorch-fid's
    pt_inception-2015-12-05 (told apart by its 1008-class fc, and then run with the TF pooling).
    None reads torchvision's cache. note: torchvision's weights differ slightly from the TF
    weights the published FIDs use, so only FIDs from the pytorch-fid file compare with papers.
    random_init=True reads no file (tests only; the numbers mean nothing).
    """

    def __init__(self, weights_path=None, random_init: bool = False, input_size: int = 299):
        super().__init__()
        what = "FID Inception weights"
        state = None  # files first: a missing file fails before the network is built
        if not random_init:
            state = (_load_state(weights_path, what) if weights_path is not None else _cached_torchvision_state(
                torchvision.models.Inception_V3_Weights.IMAGENET1K_V1, what, "--fid-weights"))
        # init_weights=False skips torchvision's slow truncated-normal init; weights follow anyway
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, transform_input=False,
                                              init_weights=False)
        net.fc = nn.Identity()  # keep the 2048-d pool features, drop the classifier
        self.kind = "random (meaningless)" if random_init else self._load(net, state)
        self.net, self.input_size = net, input_size
        self.requires_grad_(False).eval()

    @staticmethod
    def _load(net: nn.Module, state: dict) -> str:
        """Load a torchvision or pytorch-fid state dict into net; returns which kind it was."""
        what = "FID Inception weights"
        fc = state.get("fc.weight")
        is_tf_fid = fc is not None and fc.shape[0] == 1008  # the TF graph has 1008 classes
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{what}: keys or shapes do not match InceptionV3 ({exc})") from exc
        if not is_tf_fid:
            return "torchvision"
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7b", "Mixed_7c"):
            setattr(net, name, _TFPoolBranch(getattr(net, name), max_pool=name == "Mixed_7c"))
        return "pytorch-fid (TF Inception 2015-12-05)"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the FID convention: bilinear resize to 299x299 (aspect ratio not kept), then [-1, 1]
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False)  # (B, 3, 299, 299)
        return self.net(x * 2 - 1)  # (B, 2048)


# ----------------------------------------------------------------------------- the networks of one run

class Metrics:
    """The networks of one evaluation run, the notes on what was left out, and a feature cache."""

    def __init__(self, lpips: Optional[LPIPS] = None, inception: Optional[InceptionFeatures] = None,
                 notes: Optional[list] = None, device="cpu"):
        self.device = torch.device(device)
        self.lpips = lpips.to(self.device) if lpips is not None else None
        self.inception = inception.to(self.device) if inception is not None else None
        self.notes = list(notes or [])
        self.feature_cache: dict[str, torch.Tensor] = {}  # real path -> (2048,) feature, across rows

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception(images.to(self.device)).double().cpu()  # (B, 2048)


def _optional(build, explicit: bool, name: str, notes: list):
    """Build a metric network; a missing default file becomes a note, a missing named file an error."""
    try:
        return build()
    except FileNotFoundError as exc:
        if explicit:
            raise
        notes.append(f"{name} left out: {exc}")
        return None


def build_metrics(cfg) -> Metrics:
    """LPIPS and Inception networks per the config, or notes saying why a metric is left out."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    notes = []
    if cfg.random_init_for_testing:
        notes.append("--random-init-for-testing: LPIPS and FID come from untrained networks; "
                     "their numbers mean nothing")
    lpips = _optional(lambda: LPIPS(cfg.lpips_net, cfg.lpips_weights, cfg.lpips_backbone,
                                    random_init=cfg.random_init_for_testing),
                      cfg.lpips_weights is not None or cfg.lpips_backbone is not None, "LPIPS", notes)
    inception = _optional(lambda: InceptionFeatures(cfg.fid_weights, cfg.random_init_for_testing),
                          cfg.fid_weights is not None, "FID", notes)
    if inception is not None and inception.kind == "torchvision":
        notes.append("FID uses torchvision's InceptionV3 weights, which differ slightly from the TF "
                     "weights of published FIDs; pass pytorch-fid's file with --fid-weights to compare")
    return Metrics(lpips, inception, notes, device)
