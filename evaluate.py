"""The one metrics script: SSIM, PSNR, LPIPS and FID, scored the way PGPIS papers score.

Pose-guided person image synthesis papers (PATN, NTED, CASD, PIDM, CFLD, FPDM, RPFM) compare a
generated image with the ground-truth target photo at 256x176 (or 512x352):

- SSIM (Wang et al. 2004): local means, variances and covariance under an 11x11 Gaussian window
  (sigma 1.5) on [0, 1] images, averaged over the valid window positions and the channels. This is
  the convention of scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`, written here from the formula.
- PSNR on [0, 1]: 10 log10(1 / MSE), per image.
- LPIPS (Zhang et al. 2018, arXiv 1801.03924): AlexNet or VGG16 features at five layers,
  unit-normalised along channels, squared difference, a learned non-negative 1x1 "linear head"
  per layer, spatial mean, summed over layers. Lower is more similar.
- FID (Heusel et al. 2017, arXiv 1706.08500): the Frechet distance between Gaussians fitted to
  InceptionV3 (Szegedy et al., arXiv 1512.00567) 2048-d pool features of two image sets, in
  float64, with a matrix square root that stays real on (near-)singular covariances.
- Sharpness: the 3x3 Laplacian's variance of the generated images over that of their real
  targets (1.0 = as sharp as the photos). SSIM and PSNR reward blur; this column shows it.
- Baselines, by the same code and on the same pairs as the generated row: "copy the source image"
  and "the mean training image", so every table shows how far above trivial a model stands.

Every scorer returns a plain metrics dict (score_folders, score_baselines) and print_table prints
{row name: dict} with the columns in TABLE_COLUMNS, so further rows or columns (the retrieval
metrics of the fusion stage, fusion.py) join the same table and JSON.

Files are matched by name, the way sample.py writes them: the generated `{source_stem}___{target_stem}.png`
matches the real image whose stem is `target_stem`; a name without `___` matches by its own stem.
Both sides are resized to the evaluation size with data.resize_for_eval (bicubic, antialiased).

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

Quality against time (--sweep). One command answers "how much faster is RPFM at FPDM's quality":
the checkpoints (--rpfm-ckpt, --fpdm-ckpt and, when it exists, --reflow-ckpt; runs/tiny/ by default)
generate their dataset's whole --split (--limit N: the first N pairs) at every point of SWEEP_POINTS:
RPFM Euler 1-32 steps and Heun 2-8 with guidance w 2, Euler 1-32 without (w 1: one branch), FPDM's
release (DDPM 20, w 2) and DDIM 5-50, the reflow student Euler 1, 2, 4 (guidance baked in). Each
point draws from the same noise and generates exactly as sample.py does (its `generate`: the same
timer, source encoding + sampling loop + VAE decoding, CUDA synchronised, one untimed warm-up batch;
the NFE counted by wrapping the UNet); its images are scored like any folder (SSIM, PSNR,
sharpness, LPIPS / FID where the weights exist). The time per image is then measured once more,
every point in turn for 7 rounds, so that a slow phase of a shared machine hits all points alike
(the median; the first pass's total stays in the CSV). --sweep-out (runs/sweep) receives results.csv (a
row per point), quality_vs_time.png (SSIM and sharpness against ms per image, log x, the two
baselines on the same pairs as lines), grid.png (six pairs: RPFM Euler 1, 2, 4, 10, the student at 1
and 2, FPDM's release) and images/<point>/. The printout ends with the quality/time frontier as a
markdown table and the HEADLINE lines: FPDM's release SSIM, sharpness and time; for RPFM and its
student the fastest point within 0.01 SSIM of it that keeps 90% of its sharpness (and, beside it,
the fastest by SSIM alone, which a blurry one-step average can win) with the time ratio; and the
step count at which RPFM's guided Euler falls more than 0.02 SSIM below its best, or blurs.

One-step denoising (--one-step CKPT), a diagnostic: noise the split's target latents to several
levels, predict them back with ONE network call (no sampler), decode and score against the targets;
plus, for FPDM, the prediction from what its sampler really starts from (pure noise at step 951),
and the size of the fusion term next to the time term in the UNet's embedding. It tells whether a
model that samples badly is bad at some noise levels, or good everywhere and let down by sampling.

    python evaluate.py            # the newest folder `python sample.py` wrote, with its baselines
    python evaluate.py --generated runs/samples/rpfm --real DATA/test_highres [--size 256x176]
    python evaluate.py --baselines --data DATA [--split test]
    python evaluate.py --sweep [--limit 64] [--batch-size 16] [--device cuda]   # -> runs/sweep/
    python evaluate.py --one-step runs/tiny/fpdm.pt [--no-ema] [--limit 256]
    python evaluate.py --fusion-ckpt runs/tiny/fusion.pt --data runs/benchmark-64x44   # retrieval
    pytest -q tests/test_evaluate.py

Shape letters: B batch, C channels (3 for images), H W height width, N images in a set,
D feature dimension (2048 for Inception), K window size.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
import data
import diffusion
import fusion
import pipeline
import sample  # the sweep generates exactly as sample.py does (sample.py imports no evaluate.py)
from data import PairDataset, option, parse_size, progress, resize_for_eval
from guidance import guided_output
from pipeline import Generator, Sampling
from unet import timestep_embedding

DEFAULT_REFLOW_CKPT = "runs/tiny/reflow.pt"  # where `python train.py --method reflow` leaves it
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NAME_SEPARATOR = "___"  # sample.py names generated files {source_stem}___{target_stem}.png


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


# ----------------------------------------------------------------------------- configuration

@dataclass
class EvalConfig:
    """Every flag of the CLI (one field, one flag). With none: the newest folder sample.py wrote."""
    generated: Optional[str] = option(None, "folder of generated images (empty: the newest sample.py "
                                            "folder under --runs, with its pairs and baselines)")
    real: Optional[str] = option(None, "folder of ground-truth images")
    runs: str = option("runs", "where sample.py wrote <runs>/samples/<method>/ (used without --generated)")
    size: str = option("", "evaluation size HxW (256x176, 512x352); empty: the photos' size of "
                           "a sample.py folder, else 256x176")
    out: str = option("", "JSON file written; empty: <runs>/evaluate.json")
    batch_size: int = option(16, "images per batch")
    device: str = option("auto", "cpu, cuda, ...; auto picks cuda if present")
    lpips_net: str = option("alex", "LPIPS backbone", choices=["alex", "vgg"])
    lpips_weights: Optional[str] = option(None, "LPIPS heads (lpips format)")
    lpips_backbone: Optional[str] = option(None, "torchvision AlexNet/VGG16 file")
    fid_weights: Optional[str] = option(None, "InceptionV3 file: torchvision's or pytorch-fid's "
                                              "pt_inception-2015-12-05")
    fid_ref: Optional[str] = option(None, "folder (e.g. the train set) or .npz with mu, sigma: also "
                                          "report FID against it")
    baselines: bool = option(False, "add the copy-source / mean-image rows, on the generated rows' "
                                    "pairs (always on for a sample.py folder found without flags)")
    data: Optional[str] = option(None, "dataset root for --baselines")
    split: str = option("test", "split scored by --baselines")
    mean_images: int = option(0, "train images in the mean image (0 = all)")
    max_pairs: int = option(0, "score only the first N pairs (0 = all): a quick look, not a paper number")
    fusion_ckpt: Optional[str] = option(None, "a fusion .pt from train.py: the retrieval table (R@k, "
                                              "average rank) on --data's --split")
    random_init_for_testing: bool = option(False, "LPIPS/FID from untrained random networks: exercises "
                                                   "the code, numbers are meaningless")
    sweep: bool = option(False, "quality against time: generate --split with both checkpoints at every "
                                "point of SWEEP_POINTS, time and score each (CSV, plot, grid in --sweep-out)")
    rpfm_ckpt: str = option("runs/tiny/rpfm.pt", "--sweep: the RPFM checkpoint")
    fpdm_ckpt: str = option("runs/tiny/fpdm.pt", "--sweep: the FPDM checkpoint (trained on the same data)")
    reflow_ckpt: str = option(DEFAULT_REFLOW_CKPT, "--sweep: RPFM's reflow student (its points are left "
                                                   "out when this default file is missing)")
    sweep_out: str = option("runs/sweep", "--sweep: folder of results.csv, quality_vs_time.png, grid.png")
    limit: int = option(0, "--sweep: generate only the first N pairs (0: the whole split)")
    seed: int = option(0, "--sweep: seed of the initial noise, the same at every point")
    precision: str = option("auto", "--sweep: auto (bf16 autocast on CUDA, float32 elsewhere), bf16 or "
                                    "fp32", choices=pipeline.PRECISIONS)
    one_step: Optional[str] = option(None, "a fpdm / rpfm checkpoint: noise --split's target latents to "
                                           "several levels and predict them back in ONE network call "
                                           "(a diagnostic: where along the path is the model good?)")
    ema: bool = option(True, "--one-step: the EMA weights (--no-ema: the raw ones)")


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


def build_metrics(cfg: EvalConfig) -> Metrics:
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


# ----------------------------------------------------------------------------- files on disk

def list_images(folder, what: str) -> list[Path]:
    """Sorted image files directly inside folder; a missing or empty folder is a clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def target_stem(file_name: str) -> str:
    """The ground-truth stem a generated file is scored against (sample.py's naming)."""
    stem = Path(file_name).stem
    return stem.rsplit(NAME_SEPARATOR, 1)[1] if NAME_SEPARATOR in stem else stem


def match_files(generated_dir, real_dir) -> list[tuple[Path, Path]]:
    """(generated, real) path pairs. Extra real files are fine (the real folder holds the whole
    test set); a generated file without its ground truth is an error listing a few names."""
    real = {}
    for p in list_images(real_dir, "real"):
        if p.stem in real:
            raise ValueError(f"real folder {real_dir} holds two images with stem {p.stem!r}: "
                             f"{real[p.stem].name} and {p.name}")
        real[p.stem] = p
    generated = list_images(generated_dir, "generated")
    pairs = [(g, real[target_stem(g.name)]) for g in generated if target_stem(g.name) in real]
    if len(pairs) < len(generated):
        missing = [g.name for g in generated if target_stem(g.name) not in real]
        raise ValueError(
            f"{len(missing)} of {len(generated)} generated images have no ground truth in {real_dir} "
            f"(e.g. {', '.join(missing[:3])}); '{{source}}{NAME_SEPARATOR}{{target}}.png' needs a real "
            f"image named '{{target}}.<ext>'")
    return pairs


def load_image(path, size: tuple[int, int]) -> torch.Tensor:
    """An image file as (3, H, W) float in [0, 1] at the evaluation size (bicubic, antialiased).
    note: generated files from sample.py already have the photo's aspect ratio, never square."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H0, W0, 3)
    img = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255  # (3, H0, W0)
    h0, w0 = img.shape[-2:]
    if h0 == w0 and size[0] != size[1]:
        # a square file is a padded copy of the portrait photo (data.py reads it the same way):
        # keep the central person crop instead of squashing the padding into the frame
        keep = round(w0 * size[1] / size[0])
        img = img[:, :, (w0 - keep) // 2:(w0 - keep) // 2 + keep]  # (3, H0, keep)
    if tuple(img.shape[-2:]) != tuple(size):
        # note: bicubic overshoots past [0, 1] near edges; clamp so SSIM/PSNR see valid images
        img = resize_for_eval(img[None], size)[0].clamp(0, 1)  # (3, H, W)
    return img


# ----------------------------------------------------------------------------- scoring

def _batches(pairs, size, batch_size, generated_image=None):
    """Yield (generated (B, 3, H, W), real (B, 3, H, W), real keys) over (gen path, real path) pairs."""
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        real = torch.stack([load_image(r, size) for _, r in chunk])  # (B, 3, H, W)
        if generated_image is None:
            gen = torch.stack([load_image(g, size) for g, _ in chunk])  # (B, 3, H, W)
        else:
            gen = generated_image.expand(len(chunk), -1, -1, -1)  # (B, 3, H, W), one image repeated
        yield gen, real, [str(r) for _, r in chunk]


def _fid_entries(metrics: Metrics, gen_feats, real_keys, ref_stats) -> dict:
    """{'fid': vs the matched real images, 'fid_ref': vs the reference set} where computable."""
    real_feats = torch.stack([metrics.feature_cache[k] for k in real_keys])  # (N_real, 2048)
    if gen_feats.shape[0] < 2 or real_feats.shape[0] < 2:
        metrics.note("FID left out: it needs at least 2 generated and 2 real images")
        return {}
    row = {"fid": frechet_distance_to_features(gen_feats, *feature_stats(real_feats))}
    if ref_stats is not None:
        row["fid_ref"] = frechet_distance_to_features(gen_feats, *ref_stats)
    return row


def _cache_real_features(metrics: Metrics, real: torch.Tensor, keys: list) -> None:
    """Inception features of the real images (B, 3, H, W) not cached yet, once per key (a target
    can repeat within a batch and across rows)."""
    new = {}  # key -> its first index in this batch
    for i, key in enumerate(keys):
        if key not in metrics.feature_cache:
            new.setdefault(key, i)
    if new:
        feats = metrics.features(real[list(new.values())])  # (B_new, 2048)
        metrics.feature_cache.update(zip(new, feats))


@torch.no_grad()
def score_pairs(pairs, metrics: Metrics, size=(256, 176), batch_size=16, generated_image=None,
                ref_stats=None, desc="scoring") -> dict:
    """Metrics dict of generated images scored against their ground truth.

    pairs: [(generated path or None, real path)]; generated_image (3, H, W) in [0, 1] replaces
    every generated file (the mean-image baseline). Real Inception features are cached by path.
    """
    per_image = {"ssim": [], "psnr": [], "lpips": [], "sharp_gen": [], "sharp_real": []}
    gen_feats = []
    n_batches = math.ceil(len(pairs) / batch_size)
    for gen, real, keys in progress(_batches(pairs, size, batch_size, generated_image), total=n_batches,
                                desc=desc, leave=False):
        gen, real = gen.to(metrics.device), real.to(metrics.device)
        per_image["ssim"].append(ssim(gen, real).cpu())
        per_image["psnr"].append(psnr(gen, real).cpu())
        per_image["sharp_gen"].append(laplacian_variance(gen).cpu())
        per_image["sharp_real"].append(laplacian_variance(real).cpu())
        if metrics.lpips is not None:
            per_image["lpips"].append(metrics.lpips(gen, real).cpu())
        if metrics.inception is not None:
            _cache_real_features(metrics, real, keys)
            if generated_image is None:
                gen_feats.append(metrics.features(gen))
    row = {"n_images": len(pairs)}
    means = {k: float(torch.cat(v).double().mean()) for k, v in per_image.items() if v}
    row.update({k: v for k, v in means.items() if not k.startswith("sharp_")})
    row["sharpness"] = means["sharp_gen"] / max(means["sharp_real"], 1e-12)  # 1.0: as sharp as real
    if metrics.inception is not None:
        if generated_image is not None:  # one image: one forward, repeated
            gen_feats = [metrics.features(generated_image[None]).expand(len(pairs), -1)]
        unique_real = list(dict.fromkeys(str(r) for _, r in pairs))
        row.update(_fid_entries(metrics, torch.cat(gen_feats), unique_real, ref_stats))
    return row


def score_folders(generated, real, metrics: Metrics, size=(256, 176), batch_size=16,
                  ref_stats=None, max_pairs: int = 0) -> dict:
    """Match a generated folder to a real folder by name and score it (see score_pairs);
    max_pairs > 0 keeps the first max_pairs matches in name order."""
    pairs = match_files(generated, real)
    pairs = pairs[:max_pairs] if max_pairs > 0 else pairs
    return score_pairs(pairs, metrics, size, batch_size, ref_stats=ref_stats, desc=Path(generated).name)


@torch.no_grad()
def reference_stats(path, metrics: Metrics, size=(256, 176), batch_size=16):
    """(mu, sigma) of a reference set: a folder of images, or an .npz with 'mu' and 'sigma'
    (pytorch-fid's --save-stats format)."""
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"--fid-ref: file not found: {path}")
        with np.load(path) as stats:
            if "mu" not in stats or "sigma" not in stats:
                raise ValueError(f"--fid-ref: {path} needs arrays 'mu' and 'sigma', has {list(stats)}")
            return torch.from_numpy(stats["mu"]).double(), torch.from_numpy(stats["sigma"]).double()
    files = list_images(path, "--fid-ref")
    feats = []
    for i in progress(range(0, len(files), batch_size), desc="fid-ref", leave=False):
        feats.append(metrics.features(torch.stack([load_image(f, size) for f in files[i:i + batch_size]])))
    return feature_stats(torch.cat(feats))  # (D,), (D, D)


# ----------------------------------------------------------------------------- baselines

def mean_training_image(root, size=(256, 176), max_images: int = 0) -> torch.Tensor:
    """The pixel-wise mean (3, H, W) in [0, 1] of the distinct train images (at the eval size).
    max_images > 0 averages that many, evenly spaced over the sorted names."""
    train = PairDataset(root, "train", size[0])
    names = sorted({name for pair in train.pairs for name in pair})
    if max_images > 0 and len(names) > max_images:
        names = [names[i] for i in np.linspace(0, len(names) - 1, max_images).round().astype(int)]
    total = torch.zeros(3, *size, dtype=torch.float64)
    for name in progress(names, desc="mean train image", leave=False):
        total += load_image(train.image_path(name), size).double()
    return (total / len(names)).float()  # (3, H, W)


def score_baselines(root, metrics: Metrics, split="test", size=(256, 176), batch_size=16,
                    ref_stats=None, mean_images: int = 0, max_pairs: int = 0, pairs=None) -> dict:
    """Rows for two trivial generators scored against the split's ground-truth targets:
    'copy source' outputs the source photo unchanged (right person and clothes, wrong pose);
    'mean train image' outputs one blurry average person whatever the inputs.
    pairs: [(source name, target name)] of the split, the pairs a generated row was scored on
    (None: all of the split's pairs); max_pairs > 0 keeps the first max_pairs of them."""
    dataset = PairDataset(root, split, size[0], verbose=False)
    pairs = [(dataset.image_path(s), dataset.image_path(t)) for s, t in (pairs or dataset.pairs)]
    pairs = pairs[:max_pairs] if max_pairs > 0 else pairs
    if not pairs:
        raise ValueError(f"--baselines: split {split!r} of {root} has no pairs")
    rows = {"baseline: copy source": score_pairs(pairs, metrics, size, batch_size, ref_stats=ref_stats,
                                                 desc="copy source")}
    mean = mean_training_image(root, size, mean_images)
    rows["baseline: mean train image"] = score_pairs(
        [(None, t) for _, t in pairs], metrics, size, batch_size, generated_image=mean,
        ref_stats=ref_stats, desc="mean image")
    return rows


# ----------------------------------------------------------------------------- the sweep: quality against time

SWEEP_W = 2.0  # both papers' release guidance weight; w_src = w_fus is plain CFG: two branches a step
FPDM_RELEASE = ("fpdm", Sampling(20, "ddpm", SWEEP_W, SWEEP_W))  # FPDM's release sampler
# (method, Sampling). Every point draws the same pairs from the same noise, so two points differ only
# by the sampler. RPFM without guidance (w = 1) runs one branch per evaluation: half the NFE of w = 2.
# The reflow student has its guidance baked in: w = 1, one branch, NFE = steps (left out, with a
# note, when its checkpoint does not exist).
SWEEP_POINTS = (
    *(("rpfm", Sampling(n, "euler", SWEEP_W, SWEEP_W)) for n in (1, 2, 4, 8, 16, 32)),
    *(("rpfm", Sampling(n, "heun", SWEEP_W, SWEEP_W)) for n in (2, 4, 8)),
    *(("rpfm", Sampling(n, "euler", 1.0, 1.0)) for n in (1, 2, 4, 8, 16, 32)),
    FPDM_RELEASE,
    *(("fpdm", Sampling(n, "ddim", SWEEP_W, SWEEP_W)) for n in (5, 10, 20, 50)),
    *(("reflow", Sampling(n, "euler", 1.0, 1.0)) for n in (1, 2, 4)),
)
# the grid's generated columns: RPFM Euler from one step up to its default 10, the reflow student at
# 1 and 2 steps, then FPDM's release
GRID_POINTS = (*(("rpfm", Sampling(n, "euler", SWEEP_W, SWEEP_W)) for n in (1, 2, 4, 10)),
               *(("reflow", Sampling(n, "euler", 1.0, 1.0)) for n in (1, 2)), FPDM_RELEASE)
GRID_PAIRS = 6
# ms_per_image: the median of batches timed in turns across the points (interleaved_times);
# ms_per_image_total: the whole generation pass of the point, as sample.py times it
SWEEP_COLUMNS = ("method", "sampler", "steps", "w_src", "w_fus", "nfe", "ms_per_image", "images_per_s",
                 "ms_per_image_total", "device", "batch", "pairs", "ssim", "psnr", "sharpness", "lpips",
                 "fid", "checkpoint", "train_step", "precision")
REACHED = 0.01       # "as good as FPDM's release": an SSIM within this of it ...
SHARP_ENOUGH = 0.9   # ... and at least this fraction of its sharpness (SSIM alone rewards blur)
FALLS_APART = 0.02   # "falls apart": an SSIM this far below RPFM's best guided Euler point


@dataclass
class Sweep:
    """What every point shares: the generators and the pairs at one photo size."""
    gens: dict           # method -> Generator
    dataset: PairDataset
    pairs: list          # [(source name, target name)]: the first --limit pairs of the split
    size: tuple          # (H, W): the photos' size, where every point is scored
    device: torch.device


def sweep_methods(cfg: EvalConfig, points) -> tuple[dict, list]:
    """{method: checkpoint path} of the methods the points need, and the points that can run: the
    reflow student is optional (left out with a note when its default file is missing)."""
    paths = {"rpfm": cfg.rpfm_ckpt, "fpdm": cfg.fpdm_ckpt, "reflow": cfg.reflow_ckpt}
    wanted = {m for m, _ in points}
    optional = cfg.reflow_ckpt == DEFAULT_REFLOW_CKPT  # a file named by --reflow-ckpt must exist
    if "reflow" in wanted and optional and not Path(cfg.reflow_ckpt).is_file():
        print(f"note: no reflow student at {cfg.reflow_ckpt} (python train.py --method reflow): its points "
              f"are left out")
        wanted.discard("reflow")
    return {m: paths[m] for m in sorted(wanted)}, [(m, s) for m, s in points if m in wanted]


def open_sweep(cfg: EvalConfig, paths: dict, device) -> Sweep:
    """Load the checkpoints the points need; they must share one dataset and one image size."""
    gens = {m: Generator.from_checkpoint(p, True, device, method=m) for m, p in paths.items()}  # swapped: error
    roots = {str(Path(cfg.data or g.data_root or data.ensure_benchmark(
        size=parse_size(g.bench_size, "bench_size"))).resolve()) for g in gens.values()}
    sizes = {g.image_size for g in gens.values()}
    if len(roots) > 1 or len(sizes) > 1:
        raise ValueError(f"--sweep compares checkpoints trained on one dataset at one size; got "
                         f"{', '.join(sorted(roots))} at {sorted(sizes)} px (pass --data ROOT to force one)")
    dataset = PairDataset(roots.pop(), cfg.split, sizes.pop(), verbose=False)
    pairs = list(dataset.pairs[:cfg.limit] if cfg.limit > 0 else dataset.pairs)
    if not pairs:
        raise ValueError(f"--sweep: split {cfg.split!r} of {dataset.root} has no pairs")
    size = parse_size(cfg.size) if cfg.size else sample.photo_size(dataset)
    return Sweep(gens, dataset, pairs, size, device)


def point_batches(sweep: Sweep, gen: Generator, cfg: EvalConfig):
    """(batch, noise) over the sweep's pairs; the noise and DDPM's step noise are seeded per batch, so
    every point draws from the same noise whatever ran before it."""
    subset = torch.utils.data.Subset(sweep.dataset, range(len(sweep.pairs)))
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, shuffle=False)
    for i, batch in enumerate(loader):
        noise = gen.noise(len(batch["source"]), "cpu", torch.Generator().manual_seed(cfg.seed + i))  # (B, C, h, w)
        torch.manual_seed(cfg.seed + i)  # DDPM's fresh noise per step
        yield batch, noise.to(sweep.device)


def generate_point(sweep: Sweep, method: str, sampling: Sampling, cfg: EvalConfig, out: Path):
    """Generate the sweep's pairs at one point into out/, as sample.py does (same timer, same NFE
    counter, same files): (files, ms per image in total, counted NFE per image). The first batch
    runs once untimed before the clock starts (allocator, cuDNN autotuning)."""
    gen, device = sweep.gens[method], sweep.device
    timer, files, nfe = sample.PhaseTimer(device), [], 0.0
    out.mkdir(parents=True, exist_ok=True)
    for i, (batch, noise) in enumerate(point_batches(sweep, gen, cfg)):
        src, pose = batch["source"].to(device), batch["target_pose"].to(device)
        if i == 0:  # warm-up: its time is thrown away
            sample.generate(gen, src, pose, sampling, sample.PhaseTimer(device), cfg.precision, noise=noise)
            torch.manual_seed(cfg.seed)  # the step noise as if the warm-up had not run
        images, nfe = sample.generate(gen, src, pose, sampling, timer, cfg.precision, noise=noise)
        files += [out / f for f in sample.write_images(images, batch, out, sweep.size)]
    return files, 1000 * sum(timer.seconds.values()) / len(files), nfe


TIMING_ROUNDS = 7  # timed batches per point for ms_per_image, taken in turns across the points


def interleaved_times(sweep: Sweep, points, cfg: EvalConfig) -> list[float]:
    """ms per image of each point: the median of TIMING_ROUNDS batches timed in turns (every point
    once, then every point again, ...), all on the sweep's first batch.

    Why in turns: the shared CPU has slow phases tens of seconds long (other tenants). Timed one
    after another, the points that fall into one look slower: two sweeps of the same checkpoints on
    the same machine put Heun 2 (8 NFE) 1.3x below and then 1.2x above Euler 4 (8 NFE). Taken in
    turns, a slow phase touches every point alike, and the median drops the round it hit hardest.
    """
    device = sweep.device
    first = {m: next(point_batches(sweep, sweep.gens[m], cfg)) for m in {m for m, _ in points}}
    times = [[] for _ in points]
    for round_ in progress(range(TIMING_ROUNDS + 1), desc="[sweep] timing in turns"):
        for i, (method, sampling) in enumerate(points):
            batch, noise = first[method]
            timer = sample.PhaseTimer(device)
            sample.generate(sweep.gens[method], batch["source"].to(device), batch["target_pose"].to(device),
                            sampling, timer, cfg.precision, noise=noise)
            if round_ > 0:  # round 0 warms every point up again after the long generation pass
                times[i].append(1000 * sum(timer.seconds.values()) / len(noise))
    return [float(np.median(t)) for t in times]


def point_label(method: str, s: Sampling) -> str:
    w = f"{s.w_src:g}" if s.w_src == s.w_fus else f"{s.w_src:g}/{s.w_fus:g}"
    return f"{method} {s.sampler} {s.steps} w{w}"


def sweep_point(sweep: Sweep, method: str, sampling: Sampling, metrics: Metrics, cfg: EvalConfig) -> dict:
    """One CSV row: generate, time and score the sweep's pairs at one (method, sampling). Its
    ms_per_image comes later, from `interleaved_times`."""
    label = point_label(method, sampling)
    out = Path(cfg.sweep_out) / "images" / label.replace(" ", "_").replace("/", "-")
    files, ms_total, nfe = generate_point(sweep, method, sampling, cfg, out)
    real = [sweep.dataset.image_path(t) for _, t in sweep.pairs]
    scores = score_pairs(list(zip(files, real)), metrics, sweep.size, cfg.batch_size, desc=label)
    return {"method": method, **dataclasses.asdict(sampling), "nfe": nfe,
            "ms_per_image_total": ms_total,
            "device": sample.device_name(sweep.device), "batch": cfg.batch_size, "pairs": len(files),
            **{k: scores[k] for k in ("ssim", "psnr", "sharpness", "lpips", "fid") if k in scores},
            "checkpoint": sweep.gens[method].checkpoint, "train_step": sweep.gens[method].step,
            "precision": cfg.precision}


def write_sweep_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS, restval="")  # "": LPIPS / FID left out
        writer.writeheader()
        writer.writerows(rows)
    return path


def _guided(row: dict) -> bool:
    return not (row["w_src"] == 1 and row["w_fus"] == 1)


def sweep_curves(rows: list[dict]) -> dict:
    """{curve name: its rows by step count}: one curve per (method, sampler, guided or not)."""
    curves = {}
    for r in sorted(rows, key=lambda r: r["steps"]):
        w = f"w {r['w_src']:g}" if r["w_src"] == r["w_fus"] else f"w {r['w_src']:g}/{r['w_fus']:g}"
        if r["method"] == "reflow":
            name = f"RPFM reflow student, {r['sampler']} (guidance baked in)"
        else:
            name = f"{r['method'].upper()} {r['sampler']}, {w if _guided(r) else 'no guidance'}"
        curves.setdefault(name, []).append(r)
    return curves


def _plot_panel(ax, curves: dict, baselines: dict, key: str, ylabel: str) -> None:
    """One metric against ms per image: a line per curve, its step counts beside the markers."""
    for name, points in curves.items():
        xs, ys = [r["ms_per_image"] for r in points], [r[key] for r in points]
        line, = ax.plot(xs, ys, marker="o", label=name)
        for r, x, y in zip(points, xs, ys):
            ax.annotate(str(r["steps"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7,
                        color=line.get_color())
    for (name, row), style in zip(baselines.items(), (":", "--")):
        ax.axhline(row[key], color="gray", linestyle=style, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (log scale; labels: steps)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def plot_sweep(rows: list[dict], baselines: dict, path: Path, title: str = "") -> Path:
    """quality_vs_time.png: SSIM and sharpness against ms per image, baselines as horizontal lines."""
    import matplotlib  # lazily: only the sweep draws, and a file needs no display (Agg)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.8))
    curves = sweep_curves(rows)
    _plot_panel(axes[0], curves, baselines, "ssim", "SSIM (higher is better)")
    _plot_panel(axes[1], curves, baselines, "sharpness", "sharpness (log scale; 1.0: as sharp as the photos)")
    axes[1].set_yscale("log")  # the copy-source baseline (1.0) and the mean image (0.001) frame the models
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room below the panels for the legend
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def sweep_grid(sweep: Sweep, points, cfg: EvalConfig, path: Path) -> Path:
    """grid.png: source | target pose | one column per point | target, on the first GRID_PAIRS pairs,
    every column drawn from the same noise."""
    items = [sweep.dataset[i] for i in range(min(GRID_PAIRS, len(sweep.pairs)))]
    batch = {k: torch.stack([item[k] for item in items]) for k in ("source", "target_pose", "target")}
    src, pose = batch["source"].to(sweep.device), batch["target_pose"].to(sweep.device)
    columns = []
    for method, sampling in points:
        gen = sweep.gens[method]
        torch.manual_seed(cfg.seed)
        noise = gen.noise(len(items), "cpu", torch.Generator().manual_seed(cfg.seed)).to(sweep.device)
        timer = sample.PhaseTimer(sweep.device)
        columns.append(sample.generate(gen, src, pose, sampling, timer, cfg.precision, noise=noise)[0].cpu())
    pose_rgb = batch["target_pose"][:, :3] * 2 - 1  # (B, 3, H, W): pose maps to [-1, 1] like the photos
    rows = [[batch["source"][i], pose_rgb[i], *(c[i] for c in columns), batch["target"][i]]
            for i in range(len(items))]
    labels = ("source", "target pose", *(f"{m.upper()} {s.sampler} {s.steps}" for m, s in points), "target")
    return data.save_grid([[pipeline.enlarge(c) for c in row] for row in rows], path, labels=labels)


def quality_frontier(rows: list[dict]) -> list[dict]:
    """The points no faster point beats in SSIM, fastest first."""
    best, frontier = -math.inf, []
    for r in sorted(rows, key=lambda r: r["ms_per_image"]):
        if r["ssim"] > best:
            frontier.append(r)
            best = r["ssim"]
    return frontier


def frontier_table(rows: list[dict]) -> list[str]:
    lines = ["| method | sampler | steps | w src/fus | NFE | ms/image | SSIM | PSNR | sharpness |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in quality_frontier(rows):
        lines.append(f"| {r['method']} | {r['sampler']} | {r['steps']} | {r['w_src']:g}/{r['w_fus']:g} | "
                     f"{r['nfe']:g} | {r['ms_per_image']:.2f} | {r['ssim']:.4f} | {r['psnr']:.2f} | "
                     f"{r['sharpness']:.3f} |")
    return lines


def _sampling_of(row: dict) -> Sampling:
    return Sampling(row["steps"], row["sampler"], row["w_src"], row["w_fus"])


def headline(rows: list[dict]) -> list[str]:
    """FPDM's release point; for RPFM and its student, the fastest point as good as it and the time
    ratio; and where RPFM's guided Euler falls apart (SSIM) or blurs (sharpness).

    note: "as good" needs both columns. A one-step prediction is a blurry average, which SSIM
    rewards (RPFM's unguided Euler 1 scored SSIM within 0.01 of FPDM at half its sharpness), so a
    match must also keep SHARP_ENOUGH of the release point's sharpness. The SSIM-only match is
    printed beside it, so the difference can be seen.
    """
    release = next((r for r in rows if (r["method"], _sampling_of(r)) == FPDM_RELEASE), None)
    if release is None:
        return ["HEADLINE: no FPDM release point (DDPM 20, w 2) in this sweep", *falls_apart(rows)]
    lines = [f"HEADLINE: FPDM release ({point_label(*FPDM_RELEASE)}): SSIM {release['ssim']:.4f}, sharpness "
             f"{release['sharpness']:.3f} at {release['ms_per_image']:.2f} ms/image"]
    for method, who in (("rpfm", "RPFM's"), ("reflow", "the reflow student's")):
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: r["ms_per_image"])
        if points:
            lines.append(match_line(points, release, who, sharp=True))
            lines.append(match_line(points, release, who, sharp=False))
    return lines + falls_apart(rows)


def match_line(points: list[dict], release: dict, who: str, sharp: bool) -> str:
    """The fastest of `points` within REACHED SSIM of the release point (and, if `sharp`, at least
    SHARP_ENOUGH of its sharpness), as one HEADLINE line."""
    rule = (f"within {REACHED} SSIM and {SHARP_ENOUGH:.0%} of its sharpness" if sharp else
            f"within {REACHED} SSIM alone")
    good = [r for r in points if r["ssim"] >= release["ssim"] - REACHED and
            (not sharp or r["sharpness"] >= SHARP_ENOUGH * release["sharpness"])]
    if not good:
        best = max(points, key=lambda r: r["ssim"])
        return (f"HEADLINE: {who} fastest point {rule}: not reached (its best SSIM: "
                f"{point_label(best['method'], _sampling_of(best))}, {best['ssim']:.4f}, sharpness "
                f"{best['sharpness']:.3f})")
    r = good[0]
    return (f"HEADLINE: {who} fastest point {rule}: {point_label(r['method'], _sampling_of(r))} (NFE "
            f"{r['nfe']:g}): SSIM {r['ssim']:.4f}, sharpness {r['sharpness']:.3f} at {r['ms_per_image']:.2f} "
            f"ms/image, time ratio {release['ms_per_image'] / r['ms_per_image']:.1f}x "
            f"(NFE ratio {release['nfe'] / r['nfe']:.0f}x)")


def falls_apart(rows: list[dict]) -> list[str]:
    """Going down in steps from RPFM's guided Euler points: the first step count whose SSIM is more
    than FALLS_APART below the best (counts above the best are not "too few steps"), and the first
    whose sharpness is below SHARP_ENOUGH of the most-steps point's (the converged ODE's)."""
    euler = sorted((r for r in rows if r["method"] == "rpfm" and r["sampler"] == "euler" and _guided(r)),
                   key=lambda r: r["steps"])
    if not euler:
        return ["HEADLINE: RPFM guided Euler falls apart at: no guided Euler points in this sweep"]
    best, most = max(euler, key=lambda r: r["ssim"]), euler[-1]
    fallen = [r for r in euler if r["steps"] < best["steps"] and r["ssim"] < best["ssim"] - FALLS_APART]
    blurred = [r for r in euler if r["sharpness"] < SHARP_ENOUGH * most["sharpness"]]
    if fallen:
        r = fallen[-1]
        by_ssim = (f"HEADLINE: RPFM guided Euler falls apart at {r['steps']} steps: SSIM {r['ssim']:.4f}, more "
                   f"than {FALLS_APART} below its best {best['ssim']:.4f} at {best['steps']} steps")
    else:
        by_ssim = (f"HEADLINE: RPFM guided Euler falls apart at: never by SSIM (within {FALLS_APART} of its best, "
                   f"{best['ssim']:.4f} at {best['steps']} steps, down to {euler[0]['steps']} steps)")
    if blurred:
        r = blurred[-1]
        by_sharpness = (f"HEADLINE: RPFM guided Euler blurs at {r['steps']} steps and below: sharpness "
                        f"{r['sharpness']:.3f}, under {SHARP_ENOUGH:.0%} of {most['sharpness']:.3f} at "
                        f"{most['steps']} steps")
    else:
        by_sharpness = (f"HEADLINE: RPFM guided Euler blurs at: never (sharpness within {SHARP_ENOUGH:.0%} of "
                        f"{most['sharpness']:.3f} at {most['steps']} steps, down to {euler[0]['steps']} steps)")
    return [by_ssim, by_sharpness]


def run_sweep(cfg: EvalConfig, points=None, grid_points=None) -> dict:
    """--sweep: results.csv, quality_vs_time.png and grid.png in --sweep-out, then the summary.
    points / grid_points: (method, Sampling) pairs; SWEEP_POINTS / GRID_POINTS unless given (tests)."""
    paths, points = sweep_methods(cfg, points or SWEEP_POINTS)
    grid_points = [(m, s) for m, s in (grid_points or GRID_POINTS) if m in paths]
    out, device = Path(cfg.sweep_out), pipeline.pick_device(cfg.device)
    sweep = open_sweep(cfg, paths, device)
    metrics = build_metrics(cfg)
    for line in metrics.notes:
        print(f"note: {line}")
    print(f"[sweep] {len(points)} points x {len(sweep.pairs)} {cfg.split} pairs of {sweep.dataset.root}, "
          f"batch {cfg.batch_size}, scored at {sweep.size[0]}x{sweep.size[1]}, on {device}")
    rows = [sweep_point(sweep, m, s, metrics, cfg) for m, s in progress(points, desc="[sweep] points")]
    for row, ms in zip(rows, interleaved_times(sweep, points, cfg)):  # the times the table and plot use
        row.update(ms_per_image=ms, images_per_s=1000 / ms)
    baselines = score_baselines(sweep.dataset.root, metrics, cfg.split, sweep.size, cfg.batch_size,
                                mean_images=cfg.mean_images, pairs=sweep.pairs)
    paths = [write_sweep_csv(rows, out / "results.csv"),
             plot_sweep(rows, baselines, out / "quality_vs_time.png",
                        f"{len(sweep.pairs)} {cfg.split} pairs, batch {cfg.batch_size}, {rows[0]['device']}"),
             sweep_grid(sweep, grid_points, cfg, out / "grid.png")]
    summary = ["quality/time frontier (no faster point has a higher SSIM):", "", *frontier_table(rows), "",
               *headline(rows)]
    print("\n".join(summary))
    print(f"baselines on the same {len(sweep.pairs)} pairs:")
    print_table(baselines)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return {"rows": rows, "baselines": baselines, "summary": summary}


# ----------------------------------------------------------------------------- one-step denoising (a diagnostic)

# how far toward noise (0 clean, 1 the noisiest input the process trains on); sampling starts at 1
ONE_STEP_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
ONE_STEP_W = (1.0, 2.0)  # without guidance, and with both papers' release weight


def level_name(process, level: float) -> str:
    if isinstance(process, diffusion.Diffusion):
        return f"level {level:.2f} (step {process.step_at(level)})"
    return f"level {level:.2f} (flow t {1 - level:.2f})"


def sampler_start(gen: Generator, latents, noise, cond, w: float) -> torch.Tensor:
    """x0 predicted from what DDPM/DDIM really feed first: pure noise at step timesteps()[0].

    note: the training input at that step still holds sqrt(alpha_bar) of the data (0.09 at step 951
    of SD's schedule); pure noise holds none. A model that leans on that remnant fails only here.
    """
    t = torch.full((latents.shape[0],), float(gen.process.timesteps(diffusion.DEFAULT_STEPS)[0]))  # (B,)
    out = guided_output(gen.unet, noise, t, cond, w, w)
    return gen.process.predict_x0_eps(out, noise, t)[0]


@torch.no_grad()
def one_step_batch(gen: Generator, batch: dict, seed: int) -> dict:
    """{row: {metric: (B,) values}} for one batch: SSIM of the decoded one-call prediction against the
    target (no sampler in between) at every level and guidance weight, and the RMS latent error."""
    x = gen.vae.encode_latents(batch["target"])  # (B, C, h, w), unit variance
    cond = pipeline.build_cond(gen.unet, gen.fusion, batch["source"], batch["target_pose"])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))  # (B, C, h, w)
    real = (batch["target"] + 1) / 2  # (B, 3, H, W) in [0, 1]
    predictions = {level_name(gen.process, lv): lambda w, lv=lv: gen.process.denoise_once(
        gen.unet, x, noise, lv, cond, w, w) for lv in ONE_STEP_LEVELS}
    if isinstance(gen.process, diffusion.Diffusion):
        predictions["pure noise at the sampler's first step"] = lambda w: sampler_start(gen, x, noise, cond, w)
    predictions["baseline: predict the zero latent"] = lambda w: torch.zeros_like(x)
    rows = {}
    for name, predict in predictions.items():
        row = {}
        for w in ONE_STEP_W:
            x_hat = predict(w)  # (B, C, h, w)
            image = (gen.vae.decode_latents(x_hat).clamp(-1, 1) + 1) / 2  # (B, 3, H, W)
            row[f"ssim_w{w:g}"] = ssim(image, real)
            row[f"rmse_w{w:g}"] = (x_hat - x).pow(2).flatten(1).mean(1).sqrt()  # (B,)
        rows[name] = row
    return rows


def embedding_norms(gen: Generator, fusion_embedding) -> dict:
    """RMS of what the time and the fusion embedding add to the UNet's embedding (their sum feeds
    every ResBlock): a fusion term far larger or smaller than the time term would drown or vanish."""
    t = torch.linspace(0, 1000, 64)  # (64,)
    rms = lambda e: e.pow(2).mean(1).sqrt().mean().item()  # noqa: E731
    norms = {"time": rms(gen.unet.time_mlp(timestep_embedding(t, gen.unet.config.model_channels)))}
    if gen.unet.fusion_mlp is not None:
        norms["fusion"] = rms(gen.unet.fusion_mlp(fusion_embedding))
        norms["fusion (dropped: zeros)"] = rms(gen.unet.fusion_mlp(torch.zeros_like(fusion_embedding)))
    return norms


ONE_STEP_COLUMNS = [("ssim_w1", "SSIM w 1", "{:.4f}"), ("ssim_w2", "SSIM w 2", "{:.4f}"),
                    ("rmse_w1", "latent RMSE w 1", "{:.3f}"), ("rmse_w2", "latent RMSE w 2", "{:.3f}")]


@torch.no_grad()
def run_one_step(cfg: EvalConfig) -> dict:
    """--one-step CKPT: the table of one_step_batch over the split (or its first --limit pairs)."""
    gen = Generator.from_checkpoint(cfg.one_step, cfg.ema, "cpu")
    root = cfg.data or gen.data_root or data.ensure_benchmark(size=parse_size(gen.bench_size, "bench_size"))
    dataset = PairDataset(root, cfg.split, gen.image_size, verbose=False)
    subset = torch.utils.data.Subset(dataset, range(min(cfg.limit or len(dataset), len(dataset))))
    loader = torch.utils.data.DataLoader(subset, batch_size=max(cfg.batch_size, 64), shuffle=False)
    values, fusions = {}, []
    for i, batch in enumerate(progress(loader, desc="[one-step] batches")):
        for name, row in one_step_batch(gen, batch, cfg.seed + i).items():
            for key, v in row.items():
                values.setdefault(name, {}).setdefault(key, []).append(v)
        if gen.fusion is not None:
            fusions.append(gen.fusion.embed(batch["source"], batch["target_pose"]))  # (B, F)
    rows = {name: {k: torch.cat(v).mean().item() for k, v in row.items()} for name, row in values.items()}
    weights = "EMA" if cfg.ema else "raw"
    print(f"one-step prediction of the clean latent, {len(subset)} {cfg.split} pairs, {gen.method} "
          f"({gen.checkpoint}, {weights} weights, prediction {getattr(gen.process, 'prediction', 'velocity')}):")
    print_table(rows, ONE_STEP_COLUMNS)
    norms = embedding_norms(gen, torch.cat(fusions) if fusions else None)
    print("RMS of the embedding terms the ResBlocks receive: " + ", ".join(f"{k} {v:.3f}" for k, v in norms.items()))
    return write_json({"one_step": rows, "embedding_rms": norms, "config": dataclasses.asdict(cfg)}, cfg)


# ----------------------------------------------------------------------------- table and CLI

# (key in a row, header, format); extend this list (or pass columns=) for new metrics
TABLE_COLUMNS = [("n_images", "N", "{:d}"), ("ssim", "SSIM", "{:.4f}"), ("psnr", "PSNR", "{:.2f}"),
                 ("sharpness", "sharpness", "{:.3f}"), ("lpips", "LPIPS", "{:.4f}"), ("fid", "FID", "{:.2f}"),
                 ("fid_ref", "FID-ref", "{:.2f}")]


RETRIEVAL_COLUMNS = [("R@1", "R@1", "{:.1%}"), ("R@3", "R@3", "{:.1%}"), ("R@5", "R@5", "{:.1%}"),
                     ("avg_rank", "avg rank", "{:.2f}")]


def score_retrieval(ckpt_path, root, split="test", batch_size=64, device="auto") -> dict:
    """FPDM's Table 2 for a trained fusion stage: rank every pair's true target among all test
    targets by the fused embedding, and by the source embedding alone (the reference row)."""
    model = pipeline.load_fusion(ckpt_path).to(pipeline.pick_device(device)).eval()
    pairs = PairDataset(root, split, model.image_size)  # the encoder's own input size
    loader = torch.utils.data.DataLoader(pairs, batch_size=batch_size, shuffle=False)
    return fusion.evaluate_retrieval(model, loader)


def print_table(rows: dict, columns=None, file=None) -> None:
    """Print {row name: metrics dict} as a fixed-width table; columns no row has are skipped."""
    retrieval, one_step = columns is RETRIEVAL_COLUMNS, columns is ONE_STEP_COLUMNS
    columns = [c for c in (columns or TABLE_COLUMNS) if any(c[0] in row for row in rows.values())]
    cells = [["", *[header for _, header, _ in columns]]]
    for name, row in rows.items():
        cells.append([name, *[fmt.format(row[k]) if k in row else "-" for k, _, fmt in columns]])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for line in cells:
        print("  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]),
              file=file)
    if retrieval:
        print("higher is better: R@k; lower is better: average rank (1 is perfect)", file=file)
    elif one_step:
        print("higher is better: SSIM; lower is better: latent RMSE (unit-variance latents: predicting "
              "zeros scores about 1)", file=file)
    else:
        print("higher is better: SSIM, PSNR (dB); lower is better: LPIPS, FID; sharpness: 1.0 is as "
              "sharp as the real photos (Laplacian variance), below 1 is blurrier", file=file)


@dataclass
class Plan:
    """What one run scores: generated pairs, and the pairs of the baseline rows, at one size."""
    size: tuple
    generated: list                     # [(generated path, real path)]; [] for baselines alone
    name: str = ""                      # the generated row's name in the table
    data: Optional[str] = None          # dataset root of the baseline rows (None: no baselines)
    split: str = "test"
    baseline_pairs: Optional[list] = None  # [(source name, target name)]; None: the whole split


def plan_request(cfg: EvalConfig) -> Plan:
    """Fail on a malformed request in a second, before any network loads."""
    if cfg.generated is None and not cfg.baselines:
        return plan_newest_samples(cfg)
    if cfg.generated is not None and cfg.real is None:
        raise ValueError("--generated needs --real (the folder of ground-truth images)")
    if cfg.baselines and cfg.data is None:
        raise ValueError("--baselines needs --data ROOT (the dataset whose test pairs are scored)")
    size = parse_size(cfg.size or "256x176")
    generated = match_files(cfg.generated, cfg.real) if cfg.generated is not None else []
    generated = generated[:cfg.max_pairs] if cfg.max_pairs > 0 else generated
    baseline_pairs = pairs_named_by([g for g, _ in generated], cfg.data, cfg.split) if (
        cfg.baselines and generated) else None
    return Plan(size, generated, Path(cfg.generated).resolve().name if generated else "",
                cfg.data if cfg.baselines else None, cfg.split, baseline_pairs)


def plan_newest_samples(cfg: EvalConfig) -> Plan:
    """No flags: the newest folder sample.py wrote, its pairs (samples.json), and the baselines on them."""
    found = pipeline.newest_sample_record(cfg.runs)
    if found is None:
        raise FileNotFoundError(f"no sample folder in {Path(cfg.runs) / 'samples'}/: run `python sample.py` "
                                f"first (or pass --generated DIR --real DIR)")
    folder, record = found
    dataset = PairDataset(record["data_root"], record["split"], record["image_size"], verbose=False)
    rows = record["pairs"][:cfg.max_pairs] if cfg.max_pairs > 0 else record["pairs"]
    generated = [(folder / file, dataset.image_path(target)) for _, target, file in rows]
    missing = [g.name for g, _ in generated if not g.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {folder / pipeline.SAMPLE_RECORD} are "
                                f"missing (e.g. {missing[0]}); rerun `python sample.py`")
    print(f"evaluate.py: scoring {folder}/ ({len(rows)} {record['split']} pairs of {record['data_root']}, "
          f"from {record['checkpoint']}); --generated DIR --real DIR scores another folder")
    size = parse_size(cfg.size) if cfg.size else tuple(record["photo_size"])
    return Plan(size, generated, folder.name, record["data_root"], record["split"],
                [(source, target) for source, target, _ in rows])


def pairs_named_by(files, root, split: str) -> list[tuple[str, str]]:
    """The split's (source, target) pairs that generated files `{source}___{target}.png` name, in order.

    note: the baselines must be scored on the generated row's pairs: over the whole split they
    would answer another question (a 64-pair run beside 822-pair baselines).
    """
    dataset = PairDataset(root, split, 256, verbose=False)
    by_stems = {(Path(s).stem, Path(t).stem): (s, t) for s, t in dataset.pairs}
    keys = [tuple(Path(f).stem.rsplit(NAME_SEPARATOR, 1)) for f in files]
    missing = [Path(f).name for f, key in zip(files, keys) if key not in by_stems]
    if missing:
        raise ValueError(f"--baselines: {len(missing)} of {len(files)} generated files name no {split} pair "
                         f"of {root} (e.g. {', '.join(missing[:3])}), so the baselines could not be scored "
                         f"on the same pairs; name them '{{source}}{NAME_SEPARATOR}{{target}}.png'")
    return [by_stems[key] for key in keys]


def score_plan(plan: Plan, cfg: EvalConfig, metrics: Metrics, ref_stats) -> dict:
    """{row name: metrics}: the generated row, then the baselines on the same pairs."""
    rows = {}
    if plan.generated:
        rows[plan.name] = score_pairs(plan.generated, metrics, plan.size, cfg.batch_size,
                                      ref_stats=ref_stats, desc=plan.name)
    if plan.data is not None:
        rows.update(score_baselines(plan.data, metrics, plan.split, plan.size, cfg.batch_size, ref_stats,
                                    cfg.mean_images, cfg.max_pairs, plan.baseline_pairs))
    return rows


def run(cfg: EvalConfig) -> dict:
    """Score what the config names, print notes and the table, write the JSON; returns the JSON dict."""
    if cfg.sweep:
        return run_sweep(cfg)
    if cfg.one_step is not None:
        return run_one_step(cfg)
    if cfg.fusion_ckpt is not None:
        if cfg.data is None:
            raise ValueError("--fusion-ckpt needs --data ROOT (the dataset whose test pairs are ranked)")
        return run_retrieval(cfg)
    plan = plan_request(cfg)
    metrics = build_metrics(cfg)
    for line in metrics.notes:  # what is left out, said before minutes of scoring
        print(f"note: {line}")
    n_said = len(metrics.notes)
    ref_stats = None
    if cfg.fid_ref is not None and metrics.inception is not None:
        ref_stats = reference_stats(cfg.fid_ref, metrics, plan.size, cfg.batch_size)
    rows = score_plan(plan, cfg, metrics, ref_stats)
    for line in metrics.notes[n_said:]:
        print(f"note: {line}")
    print_table(rows)
    result = {"size": list(plan.size), "rows": rows, "notes": metrics.notes,
              "config": dataclasses.asdict(cfg),
              "lpips_net": cfg.lpips_net if metrics.lpips is not None else None,
              "fid_network": metrics.inception.kind if metrics.inception is not None else None}
    return write_json(result, cfg)


def write_json(result: dict, cfg: EvalConfig) -> dict:
    out = Path(cfg.out or Path(cfg.runs) / "evaluate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def run_retrieval(cfg: EvalConfig) -> dict:
    rows = score_retrieval(cfg.fusion_ckpt, cfg.data, cfg.split, cfg.batch_size, cfg.device)
    print(f"retrieval of the true target among all {cfg.split} targets ({cfg.fusion_ckpt}):")
    print_table(rows, RETRIEVAL_COLUMNS)
    write_json({"retrieval": rows, "config": dataclasses.asdict(cfg)}, cfg)
    return rows


def main(argv=None) -> dict:
    cfg, _ = data.parse_config(EvalConfig, argv, __doc__.split("\n\n")[0])
    try:
        return run(cfg)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
