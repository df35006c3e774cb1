"""The KL autoencoder: images <-> latents, in the Stable Diffusion style.

Both generative processes of this project (diffusion.py, flow_matching.py) work in a small
latent space instead of on pixels, as latent diffusion does (Rombach et al., "High-Resolution
Image Synthesis with Latent Diffusion Models", arXiv:2112.10752). This file holds the
autoencoder that makes that space:

- the encoder maps an image (B, 3, H, W) in [-1, 1] to the mean and log-variance of a
  diagonal Gaussian over latents (B, Z, H/f, W/f), f = the downsampling factor and Z the
  latent channels (4 in SD's shape, 8 in the tiny CPU preset);
- the decoder maps a latent back to an image;
- training (`VAE.loss`) is the VAE objective of Kingma & Welling (arXiv:1312.6114) with the
  weights of latent diffusion: an L1 reconstruction term plus a *very* small KL term, so the
  model is almost a plain autoencoder whose latents stay well-behaved;
- `scaling_factor` is measured once on training latents (1 / their std) so that the latents
  the processes see have unit variance.

The architecture is the one of diffusers' `AutoencoderKL` (itself the LDM "KL-f8" autoencoder):
ResNet blocks with GroupNorm and SiLU, one stride-2 conv per level going down, one nearest
upsample + conv per level going up, a single-head self-attention block in the middle of both
halves. The "sd" preset has exactly SD's shape, and `load_diffusers_vae(path)` loads real
Stable Diffusion VAE weights saved by diffusers (config.json + diffusion_pytorch_model.safetensors)
into it; our module names are our own, and `diffusers_name` spells out the mapping.

Presets (`sd`'s parameter count equals diffusers' for SD's config; a test checks it):

    preset  block_out_channels  layers/level     groups  f  latent                        parameters
    tiny    16, 32, 32          1 (decoder 2)    4       4  32 px -> 8x8x8 (main job)         246,043
                                                            64 px -> 16x16x8
    small   64, 128, 256        2 (decoder 3)    16      4  128 px -> 32x32x4              13,859,495
    sd      128, 256, 512, 512  2 (decoder 3)    32      8  256 px -> 32x32x4              83,653,863

Use:
    model = VAE("tiny")                      # or a VAEConfig, or a dict of its fields
    mean, logvar = model.encode(images)      # (B, 3, H, W) in [-1, 1] -> (B, Z, h, w) each
    total, parts = model.loss(images)        # L1 + 1e-6 KL per pixel value; parts: recon, kl
    model.measure_scaling_factor(latents)    # scaling_factor = 1 / std, a buffer in the state dict
    z = model.encode_latents(images)         # what the processes see; decode_latents undoes the scale
    sd = load_diffusers_vae("path/to/sd-vae-ft-mse")   # or a pipeline folder with vae/ inside

Weights (nothing downloads): pass a diffusers AutoencoderKL folder, e.g. stabilityai/sd-vae-ft-mse
saved locally, to `load_diffusers_vae` or to `python train.py --vae-ckpt DIR`. It holds config.json
and diffusion_pytorch_model.safetensors (or .bin). diffusers itself is not a dependency. A missing
folder or file raises a one-line FileNotFoundError. A file that does not match its config raises a
ValueError that names the keys.

Run / test:
    python vae.py --preset tiny --image-size 64 --batch-size 16   # sizes, parameters, ms per step
    python vae.py --diffusers PATH/TO/sd-vae                       # load and describe real weights
    python -m pytest -q tests/test_vae.py
Training is `python train.py --method vae` (train.py calls `VAE.loss`).

Shape letters: B batch, C channels, H W image height and width, h w latent height and width
(H / f, W / f), L number of attention tokens (h * w at that level), Z latent channels (4 or 8).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from cli import option, parse_config, resolve_config


# ----------------------------------------------------------------------------------------------
# Configuration and named presets
# ----------------------------------------------------------------------------------------------


@dataclass
class VAEConfig:
    """Shape and loss settings of a VAE. One entry of `block_out_channels` per resolution level;
    every level but the last halves the resolution, so the downsampling factor is
    2 ** (len(block_out_channels) - 1)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (16, 32, 32)
    layers_per_block: int = 1  # ResNet blocks per encoder level; the decoder has one more (as SD)
    norm_num_groups: int = 4
    mid_attention: bool = True  # the self-attention block between the two middle ResNet blocks
    use_quant_conv: bool = True  # the 1x1 convs around the latent (SD has them; SD3/FLUX do not)
    use_post_quant_conv: bool = True
    recon_loss: str = "l1"  # "l1" (what LDM uses) or "l2"
    # note: LDM's autoencoder configs use kl_weight 1e-6 with both terms summed over an image; our
    # loss divides both sums by the number of pixel values (see VAE.loss), so 1e-6 means the same.
    # So small a weight barely pulls toward N(0, I): the model stays a sharp, nearly deterministic
    # autoencoder (a larger weight blurs reconstructions), and the latents' overall scale is fixed
    # afterwards by `scaling_factor` instead of by the KL term.
    kl_weight: float = 1e-6
    scaling_factor: float = 1.0  # initial value of the buffer; measured later (see VAE)
    shift_factor: float = 0.0  # only SD3/FLUX-style VAEs use a shift; ours keep 0

    def __post_init__(self):
        # a config rebuilt from JSON or asdict() may hold lists: store a tuple either way
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if not self.block_out_channels:
            raise ValueError("VAEConfig.block_out_channels: expected at least one level, got ()")
        for c in self.block_out_channels:
            if c % self.norm_num_groups != 0:
                raise ValueError(
                    f"VAEConfig.block_out_channels: {c} is not divisible by "
                    f"norm_num_groups={self.norm_num_groups} (GroupNorm needs whole groups)"
                )
        if self.recon_loss not in ("l1", "l2"):
            raise ValueError(f"VAEConfig.recon_loss: expected 'l1' or 'l2', got {self.recon_loss!r}")

    @property
    def downsample_factor(self) -> int:
        """f: images of H x W pixels have latents of H/f x W/f (every level but the last halves)."""
        return 2 ** (len(self.block_out_channels) - 1)


VAE_PRESETS = {
    # CPU, f = 4: 64 px -> 16x16x8 (32 px -> 8x8x8 in train.py's main job). Narrow because on 2 CPU
    # cores the full-resolution convs cost most of a step. 4 groups (4-8 channels per group; SD has 4
    # at full resolution) because a group of one channel is an instance norm, which strips each
    # channel's per-image mean (the colours) from a block's input: on the synthetic benchmark it
    # reached a worse L1 in as many steps.
    # 8 latent channels, not SD's 4: with 4, the tiny VAE kept the brightness and the red-blue axis
    # and dropped green, one of the rarer hues of the benchmark's garments (a flat (0.1, 0.8, 0.1)
    # patch came back as a dark grey (0.17, 0.21, 0.22); the green torsos' reconstruction error 0.28
    # RGB), and every model in its latent space drew green as grey. 8 channels (SD3 and FLUX use 16
    # for colour and detail, Esser et al. arXiv:2403.03206) give it back at no measurable step time:
    # the ceiling's torso r 0.92 -> 0.99, part dE 18.3 -> 8.1, the models' torso r 0.77-0.79 ->
    # 0.83-0.87, for 0.02-0.03 of their SSIM (RESULTS.md, "eight latent channels").
    "tiny": VAEConfig(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=4,
                      latent_channels=8),
    # a patient CPU or a small GPU; f = 4, 128 px -> 32x32x4.
    "small": VAEConfig(block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=16),
    # exactly Stable Diffusion's AutoencoderKL shape (f = 8), so its weights load with strict=True.
    "sd": VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
}


def as_vae_config(config) -> VAEConfig:
    """A preset name, a VAEConfig, or a dict of VAEConfig fields -> a VAEConfig (a fresh copy).

    note: always a copy, even of a VAEConfig, because `measure_scaling_factor` writes into the
    model's config: two models built from one config object must not share that value.
    """
    return dataclasses.replace(resolve_config(config, VAEConfig, VAE_PRESETS, "VAE"))


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    # eps 1e-6 (not PyTorch's 1e-5) because SD's VAE was trained with it: the same weights give
    # slightly different activations with another eps.
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv3x3, twice, plus a skip (a 1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        # zero-init the branch's last conv (as ADM and DiT do): each block starts as its skip, so
        # a freshly built network is shallow and trains fast; loaded weights overwrite this anyway
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions of a feature map, with a residual.

    One head whose width is the full channel count, as in SD's VAE: it only runs once, at the
    lowest resolution, where it lets every position see the whole image (global colour, layout).
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)  # starts as the identity, like ResBlock's zero-init
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        h = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, L, C)
        # softmax(q k^T / sqrt(C)) v; scaled_dot_product_attention picks a fused kernel
        h = F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h))  # (B, L, C)
        h = rearrange(self.out(h), "b (h w) c -> b c h w", h=height)  # (B, C, H, W)
        return x + h


class Downsample(nn.Module):
    """A 3x3 stride-2 conv after padding one zero row and column on the bottom and the right.

    note: the asymmetric (0, 1, 0, 1) pad with no conv padding is what the original LDM code
    (and so diffusers' Downsample2D with padding=0) does; a symmetric padding=1 gives the same
    output size but shifts the sampling grid by one pixel, so SD's weights would see other inputs.
    So unet.py keeps its own Downsample: symmetric padding=1, as SD's UNet has, and it takes the
    UNet's emb and context; changing either would change what saved checkpoints compute.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1))  # (B, C, H + 1, W + 1)
        return self.conv(x)  # (B, C, H / 2, W / 2)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv (no transposed conv: no checkerboard).

    The UNet's up path uses this same class (unet.py imports it); the conv is called `conv` in
    both state dicts, and `diffusers_name` maps it to SD's `upsamplers.0.conv`.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)


class MidBlock(nn.Module):
    """ResBlock -> self-attention -> ResBlock, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.block1 = ResBlock(channels, channels, groups)
        self.attn = SelfAttention(channels, groups) if attention else None
        self.block2 = ResBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.block2(x)


class Level(nn.Module):
    """The ResBlocks of one resolution level, then an optional resampling step."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, groups: int, resample=None):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.blocks = nn.ModuleList(ResBlock(a, b, groups) for a, b in zip(widths[:-1], widths[1:]))
        self.resample = resample  # Downsample, Upsample or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.resample is None else self.resample(x)


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> moments (B, 2Z, h, w): the mean and log-variance stacked on channels."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        # level i works at resolution H / 2**i and width ch[i]; all but the last one downsample
        self.levels = nn.ModuleList(
            Level(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, Downsample(ch[i]) if i < n - 1 else None)
            for i in range(n)
        )
        self.mid = MidBlock(ch[-1], g, cfg.mid_attention)
        self.norm_out = group_norm(ch[-1], g)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # (B, ch[0], H, W)
        for level in self.levels:
            x = level(x)  # ends at (B, ch[-1], h, w)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 2Z, h, w)


class Decoder(nn.Module):
    """Latent (B, Z, h, w) -> image (B, 3, H, W). The mirror of the encoder, with one more
    ResBlock per level (as SD: the decoder does the harder job of inventing detail)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.mid = MidBlock(ch[-1], g, cfg.mid_attention)
        # indexed like the encoder (level i at resolution H / 2**i) but run from the last level to
        # level 0; level i takes the width of level i + 1 and upsamples to level i - 1's resolution
        self.levels = nn.ModuleList(
            Level(ch[min(i + 1, n - 1)], ch[i], cfg.layers_per_block + 1, g, Upsample(ch[i]) if i > 0 else None)
            for i in range(n)
        )
        self.norm_out = group_norm(ch[0], g)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))  # (B, ch[-1], h, w)
        for level in reversed(self.levels):
            x = level(x)  # ends at (B, ch[0], H, W)
        # no tanh: like SD, the output is left unbounded and clamped only when saved as an image
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 3, H, W)


# ----------------------------------------------------------------------------------------------
# The VAE
# ----------------------------------------------------------------------------------------------


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mean, exp(logvar)) || N(0, I) ) per sample, summed over all latent elements -> (B,).

    Closed form for diagonal Gaussians: 0.5 * sum(mean^2 + var - 1 - log var).
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class VAE(nn.Module):
    """KL-regularised autoencoder. `VAE("tiny")`, `VAE(VAEConfig(...))` or `VAE(asdict(config))`.

    Buffer `scaling_factor`: the processes (diffusion, flow matching) start from unit Gaussian
    noise and their schedules assume data of roughly unit variance; raw latents have whatever std
    training gave them (about 5.5 for SD). So latents are multiplied by 1 / std, measured on
    training data (`measure_scaling_factor`) and stored with the weights. SD's 0.18215 is exactly
    that measurement on its own training latents (LDM paper, section 4.3.2 and appendix D.1).
    """

    def __init__(self, config="tiny"):
        super().__init__()
        self.config = as_vae_config(config)
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # 1x1 convs at the latent ("quant_conv" in SD: a name left over from VQGAN, nothing is
        # quantised here); they let the mean and log-variance channels mix once more.
        z = cfg.latent_channels
        self.to_moments = nn.Conv2d(2 * z, 2 * z, 1) if cfg.use_quant_conv else nn.Identity()
        self.from_latent = nn.Conv2d(z, z, 1) if cfg.use_post_quant_conv else nn.Identity()
        # buffers, not parameters: saved in the state dict, moved by .to(), never trained
        self.register_buffer("scaling_factor", torch.tensor(float(cfg.scaling_factor)))
        self.register_buffer("shift_factor", torch.tensor(float(cfg.shift_factor)))

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> (mean, logvar), each (B, Z, H/f, W/f)."""
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"VAE.encode: expected images (B, C, H, W) with H and W divisible by {f}, "
                             f"got {tuple(x.shape)}")
        moments = self.to_moments(self.encoder(x))  # (B, 2Z, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # (B, Z, h, w) each
        # clamp as SD does: early in training the log-variance head can output large values, and
        # exp(logvar) (in the sample's std and in the KL) would turn one of them into inf, then NaN
        # for the whole batch. Inside [-30, 20] the std spans 3e-7 .. 2e4, more than any useful
        # posterior, each element's KL stays bounded, and the clamp's zero gradient outside the range
        # stops the head from running further away.
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The reparameterisation trick: z = mean + std * eps, eps ~ N(0, I), so gradients flow
        to mean and logvar through a sample."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, Z, h, w) (unscaled) -> images (B, 3, h*f, w*f), roughly in [-1, 1]."""
        return self.decoder(self.from_latent(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Images -> (reconstruction of a posterior sample, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(self.sample(mean, logvar, generator)), mean, logvar

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training loss on images (B, 3, H, W) in [-1, 1] -> (total, {"recon", "kl"}).

        LDM's objective sums both terms over each image: sum|x - x_hat| + w * KL. We divide the
        whole thing by the number of pixel values (C*H*W), so "recon" is the familiar per-pixel
        L1 and the weight w keeps LDM's meaning. "kl" is reported per image, in nats.
        """
        recon, mean, logvar = self(x, generator)
        err = (recon - x).abs() if self.config.recon_loss == "l1" else (recon - x).pow(2)
        recon_loss = err.mean()
        kl = kl_to_standard_normal(mean, logvar).mean()  # nats per image
        total = recon_loss + self.config.kl_weight * kl / x[0].numel()
        return total, {"recon": recon_loss.detach(), "kl": kl.detach()}

    # --- what the processes use --------------------------------------------------------------

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """Images -> the latents the processes see: (posterior mean - shift) * scaling_factor.

        The mean, not a sample, by default: with SD's tiny KL weight the posterior std is tiny
        anyway, and the mean makes the encoding deterministic (same image, same latent).
        """
        mean, logvar = self.encode(x)
        z = self.sample(mean, logvar, generator) if sample else mean
        return (z - self.shift_factor) * self.scaling_factor  # (B, Z, h, w)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (from a process) -> images; undoes encode_latents' scale and shift."""
        return self.decode(z / self.scaling_factor + self.shift_factor)

    @torch.no_grad()
    def measure_scaling_factor(self, latents_or_batches, max_batches: int | None = None) -> float:
        """Set `scaling_factor` to 1 / std of the raw latents (posterior means) and return it.

        Accepts raw latents (B, Z, h, w), images (B, 3, H, W), or an iterable of image batches
        (tensors, or dicts such as PairDataset batches whose "target" and "source" are encoded).
        One std over all elements, as SD: a per-channel scale would change the latent's geometry.
        """
        latents = self._gather_latents(latents_or_batches, max_batches)
        std = latents.float().std()
        if not torch.isfinite(std) or std <= 0:
            raise ValueError(f"VAE.measure_scaling_factor: latent std is {std.item()}, cannot scale by 1/std")
        self.scaling_factor.fill_(1.0 / std.item())
        self.config.scaling_factor = float(self.scaling_factor)  # keep asdict(config) in step
        return self.config.scaling_factor

    def _gather_latents(self, source, max_batches):
        device = self.scaling_factor.device
        if torch.is_tensor(source):
            if source.ndim == 4 and source.shape[1] == self.latent_channels:
                return source  # already latents
            return self.encode(source.to(device))[0]
        chunks = []
        for i, batch in enumerate(source):
            if max_batches is not None and i >= max_batches:
                break
            images = [batch[k] for k in ("target", "source") if k in batch] if isinstance(batch, dict) else [batch]
            chunks += [self.encode(im.to(device))[0].cpu() for im in images]
        if not chunks:
            raise ValueError("VAE.measure_scaling_factor: got no batches to measure on")
        return torch.cat(chunks)


# ----------------------------------------------------------------------------------------------
# Loading Stable Diffusion weights saved by diffusers
# ----------------------------------------------------------------------------------------------

# Older diffusers checkpoints (before the attention refactor) name the mid-block attention
# projections query/key/value/proj_attn; newer ones to_q/to_k/to_v/to_out.0. Both load.
_OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def diffusers_name(name: str, num_levels: int) -> str:
    """Our state-dict key -> diffusers' AutoencoderKL key (the newer attention names).

    The one structural difference: diffusers numbers the decoder's `up_blocks` in the order they
    run (lowest resolution first) while our decoder levels are numbered by resolution like the
    encoder's, so decoder level i is up_blocks[num_levels - 1 - i].
    """
    rules = [
        (r"^to_moments\.", "quant_conv."),
        (r"^from_latent\.", "post_quant_conv."),
        (r"^encoder\.levels\.(\d+)\.", r"encoder.down_blocks.\1."),
        (r"^decoder\.levels\.(\d+)\.", lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}."),
        (r"(down_blocks\.\d+)\.resample\.", r"\1.downsamplers.0."),
        (r"(up_blocks\.\d+)\.resample\.", r"\1.upsamplers.0."),
        (r"\.blocks\.(\d+)\.", r".resnets.\1."),
        (r"\.mid\.block1\.", ".mid_block.resnets.0."),
        (r"\.mid\.block2\.", ".mid_block.resnets.1."),
        (r"\.mid\.attn\.norm\.", ".mid_block.attentions.0.group_norm."),
        (r"\.mid\.attn\.(q|k|v)\.", r".mid_block.attentions.0.to_\1."),
        (r"\.mid\.attn\.out\.", ".mid_block.attentions.0.to_out.0."),
        (r"\.skip\.", ".conv_shortcut."),
        (r"\.norm_out\.", ".conv_norm_out."),
    ]
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def _old_attention_name(name: str) -> str | None:
    for new, old in _OLD_ATTENTION_NAMES.items():
        marker = f".attentions.0.{new}."
        if marker in name:
            return name.replace(marker, f".attentions.0.{old}.")
    return None


def config_from_diffusers(d: dict, source: str = "config.json") -> VAEConfig:
    """diffusers' AutoencoderKL config.json (a dict) -> our VAEConfig (defaults: diffusers' own)."""
    if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"{source}: expected an AutoencoderKL config, got _class_name={d['_class_name']!r}")
    blocks = list(d.get("down_block_types", [])) + list(d.get("up_block_types", []))
    if any(b not in ("DownEncoderBlock2D", "UpDecoderBlock2D") for b in blocks):
        raise ValueError(f"{source}: only DownEncoderBlock2D/UpDecoderBlock2D blocks are supported, got {blocks}")
    if d.get("act_fn", "silu") not in ("silu", "swish"):
        raise ValueError(f"{source}: act_fn must be 'silu', got {d['act_fn']!r}")
    return VAEConfig(
        in_channels=d.get("in_channels", 3),
        out_channels=d.get("out_channels", 3),
        latent_channels=d.get("latent_channels", 4),
        block_out_channels=tuple(d.get("block_out_channels", (64,))),
        layers_per_block=d.get("layers_per_block", 1),
        norm_num_groups=d.get("norm_num_groups", 32),
        mid_attention=d.get("mid_block_add_attention", True),
        use_quant_conv=d.get("use_quant_conv", True),
        use_post_quant_conv=d.get("use_post_quant_conv", True),
        scaling_factor=d.get("scaling_factor", 0.18215),  # diffusers' default is SD's value
        shift_factor=d.get("shift_factor") or 0.0,  # null in SD configs
    )


def _read_weights(file: Path) -> dict:
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ValueError(f"{file}: reading .safetensors needs the `safetensors` package "
                             "(pip install safetensors)") from e
        return load_file(str(file), device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True)  # diffusion_pytorch_model.bin


def _find_diffusers_files(path) -> tuple[Path, Path]:
    """A folder saved by AutoencoderKL.save_pretrained, or a pipeline folder with a vae/ inside."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"load_diffusers_vae: {root} is not a directory; expected a folder with "
                                "config.json and diffusion_pytorch_model.safetensors (diffusers' AutoencoderKL)")
    if not (root / "config.json").is_file() and (root / "vae" / "config.json").is_file():
        root = root / "vae"
    config = root / "config.json"
    weights = [root / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    weights = [w for w in weights if w.is_file()]
    if not config.is_file() or not weights:
        raise FileNotFoundError(f"load_diffusers_vae: {root} must hold config.json and "
                                "diffusion_pytorch_model.safetensors (or .bin), as diffusers saves an AutoencoderKL")
    return config, weights[0]


def load_diffusers_vae(path) -> VAE:
    """Build our VAE with the shape of a diffusers AutoencoderKL folder and load its weights
    (strict: every tensor of the file is used and every one of ours is filled)."""
    config_file, weights_file = _find_diffusers_files(path)
    try:
        cfg = config_from_diffusers(json.loads(config_file.read_text()), str(config_file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from e
    model = VAE(cfg)
    theirs = _read_weights(weights_file)
    ours, used, missing = {}, set(), []
    num_levels = len(cfg.block_out_channels)
    for name, tensor in model.state_dict().items():
        if name in ("scaling_factor", "shift_factor"):
            ours[name] = tensor  # from config.json, not the weights file
            continue
        key = diffusers_name(name, num_levels)
        if key not in theirs:
            key = _old_attention_name(key) or key
        if key not in theirs:
            missing.append(key)
            continue
        value = theirs[key]
        if value.numel() != tensor.numel():
            raise ValueError(f"{weights_file}: {key} has shape {tuple(value.shape)}, expected {tuple(tensor.shape)}")
        ours[name] = value.reshape(tensor.shape)  # very old checkpoints store attention as 1x1 convs
        used.add(key)
    unexpected = sorted(set(theirs) - used)
    if missing or unexpected:
        raise ValueError(f"{weights_file}: does not match its config.json: missing {missing[:5]} "
                         f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)")
    model.load_state_dict(ours, strict=True)
    return model


# ----------------------------------------------------------------------------------------------
# Command line: sizes, parameter counts and the time of one training step
# ----------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_training_step(model: VAE, image_size: int, batch_size: int, steps: int = 5) -> float:
    """Median milliseconds of one Adam step of `model.loss` on random images."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch_size, model.config.in_channels, image_size, image_size) * 2 - 1
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels: not counted
        start = time.perf_counter()
        loss, _ = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times[1:])[len(times[1:]) // 2]


@dataclass
class VAECommand:
    """The flags of `python vae.py`: which VAE to describe, and the training step to time."""

    preset: str = option("tiny", "a named size (VAE_PRESETS)")
    image_size: int = option(64, "square image side in pixels")
    batch_size: int = option(16, "images per timed training step")
    steps: int = option(5, "timed training steps (0: no timing)")
    threads: int = option(0, "torch CPU threads (0: torch's default)")
    diffusers: str | None = option(None, "load a diffusers AutoencoderKL folder instead", metavar="PATH")


def main(argv=None) -> None:
    cfg, _ = parse_config(VAECommand, argv, __doc__.split("\n")[0], VAE_PRESETS)
    if cfg.threads > 0:
        # note: on a 2-core machine busy with other work, 1 thread can be several times faster
        # than 2 (the two OpenMP threads wait on each other); measure both
        torch.set_num_threads(cfg.threads)

    try:
        model = load_diffusers_vae(cfg.diffusers) if cfg.diffusers else VAE(cfg.preset)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    s, f = cfg.image_size, model.downsample_factor
    print(f"{cfg.diffusers or cfg.preset}: {count_parameters(model) / 1e6:.2f}M parameters, "
          f"{s}x{s}x3 -> {s // f}x{s // f}x{model.latent_channels} (f={f}), "
          f"scaling_factor={model.scaling_factor.item():.5f}")
    if cfg.steps > 0:
        ms = time_training_step(model, s, cfg.batch_size, cfg.steps)
        print(f"training step, batch {cfg.batch_size} at {s}x{s}: {ms:.0f} ms "
              f"(median of {cfg.steps}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
