"""The conditional latent UNet that FPDM and RPFM share.

One network predicts a latent-sized output (noise for diffusion, velocity for flow matching)
from a noisy latent x_t, a time t, and three conditions:

- the target pose, a pixel-size pose map, encoded by `PoseEncoder` (ControlNet-style strided
  convs) and added to the output of the UNet's first conv, as FPDM does;
- the source image, turned once into tokens by `SourceEncoder` (source_encoder.py: a small conv
  encoder for the CPU presets, or a timm DINOv2 ViT, and which of its weights train) and read by
  cross-attention in every transformer block; in the CPU presets also pooled (`pool_source`) and
  added to the time embedding, and the conv encoder's tokens carry their cell's mean colour
  (UNetConfig.source_global / source_pixels: without them the tiny models drew the pose in colours
  unrelated to the source's);
- in the CPU presets, the source warped part by part into the target pose (UNetConfig.source_colours
  with source_paint "warp", poses.warp_source; "mean" paints one mean colour per part instead),
  carried in the pose map's last 4 channels and also given at the latent size beside x_t:
  attention must first learn WHERE in the source each part is, which 800 CPU steps do not teach;
  the warp says it from the keypoints (RESULTS.md, "appearance", "the source warped");
- FPDM's global fusion embedding, passed through an MLP and added to the time embedding.

The network itself is the latent-diffusion UNet: ResNet blocks that take the time (+ global)
embedding as a GroupNorm scale and shift (AdaGN), transformer blocks with self-attention,
cross-attention and a GEGLU feed-forward, a down path and an up path joined by skips.
A dropped condition is a zero tensor (None means zeros), so training-time dropping and
classifier-free guidance see exactly the same inputs. The network holds no noise schedule.

Papers:
  Rombach et al. 2022, latent diffusion / Stable Diffusion UNet      arXiv:2112.10752
  Dhariwal & Nichol 2021, AdaGN (time as scale and shift)            arXiv:2105.05233
  Zhang et al. 2023, ControlNet (zero-initialised condition convs)   arXiv:2302.05543
  Oquab et al. 2023, DINOv2 (source-image ViT)                       arXiv:2304.07193
  Shazeer 2020, GEGLU feed-forward                                   arXiv:2002.05202
  Lee et al. 2024, FPDM (fusion embedding + pose-guided diffusion)   arXiv:2412.07333

Inputs of forward(x_t, t, pose, src_tokens, fusion):
  x_t (B, C, h, w) latents; t (B,) float in [0, 1000] (flow time x 1000, or the diffusion step);
  pose (B, P, S, S) in [0, 1], P = 3 (the OpenPose picture) or 21 (+ 18 heatmaps), and with
    `source_colours` (the CPU presets) 4 more: the source in the target pose (poses.source_map:
    warped or painted, per `source_paint`; pipeline.build_cond appends them). The pose encoder's last conv
    starts at zero, so the pose map adds nothing at step 0 and is learnt from there (the painted
    colours also enter conv_in at the latent size, and count from the start);
  src_tokens (B, N, D) from `encode_source(source)`, computed once per source image;
  fusion (B, F); with fusion_dim = 0 the UNet has no fusion input at all (RPFM). train.py and
    pipeline.py set fusion_dim to the fusion model's embed_dim (0 without a fusion model).
Which condition is present and which level has attention is decided at trace or construction
time. The forward has no data-dependent Python branch, so torch.compile sees one graph.

Presets (counts printed by `python unet.py`, built on the meta device; train.py's --preset tiny /
base256 / base512 picks one of these with a VAE and a fusion size, pipeline.MODEL_PRESETS):

  preset  pixels -> latent          widths per level      attention at        source encoder     UNet + source encoder
  tiny    64 -> 16x16x8             32, 32, 64, 128       8x8, 4x4, 2x2       conv, 64 tokens     4,210,280 + 86,160
          (main job: 32 -> 8x8x8)
  tiny48  48 -> 12x12x8             32, 64, 128           6x6, 3x3            conv, 36 tokens     4,019,208 + 84,368
  small   128 -> 32x32x4            64, 128, 128, 256     16x16, 8x8, 4x4     conv, 256 tokens   30,675,268 + 358,432
  base    256 -> 32x32x4 (SD VAE)   320, 640, 1280, 1280  32x32, 16x16, 8x8   DINOv2 ViT-B/14,  889,644,164 + 86,315,520
                                                                              257 tokens
fusion_dim is 128 in the CPU presets and 768 in base.

Run:  python unet.py [--time tiny --threads 2]    (parameter counts; time a CPU training step)
Test: python -m pytest -q tests/test_unet.py
Use:  model = UNet("tiny"); out = model(**model.example_inputs())

Shape letters: B batch, C channels (latent channels for x_t), S pixel size of the source image
and pose map (square), P pose channels, h w latent height and width, N source tokens,
D context (token) width, F fusion width, E embedding width (4 x model_channels).
"""

import math
import time
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cli import option, parse_config, resolve_config
from poses import SOURCE_COLOUR_CHANNELS, SOURCE_PAINTS
from source_encoder import SourceEncoder, group_norm  # the photo as tokens (its own file)
from vae import Upsample  # the same block as the VAE's; vae.py imports nothing of unet.py


# ----------------------------------------------------------------------------- config

@dataclass
class UNetConfig:
    image_size: int = 64                 # S: pixel size of the source image and pose map
    latent_size: int = 16                # h = w of the latents the UNet denoises
    latent_channels: int = 4
    pose_channels: int = 3               # 3 for the RGB skeleton, 3 + 18 with heatmaps
    fusion_dim: int = 128                # F; train.py sets it from the fusion model's embed_dim; 0 = no fusion input
    context_dim: int = 128               # D: width of the source tokens cross-attention reads
    model_channels: int = 32             # width of the first level
    channel_mult: tuple = (1, 1, 2, 4)   # width multiplier per level; one 2x downsample between levels
    num_res_blocks: int = 1              # ResNet blocks per level on the way down (one more on the way up)
    attention_levels: tuple = (1, 2, 3)  # levels (0 = full latent size) that get transformer blocks
    head_dim: int = 32                   # attention heads = channels // head_dim
    transformer_depth: int = 1
    ff_mult: int = 2                     # feed-forward hidden width = ff_mult x channels
    pose_widths: tuple = (8, 16, 32)     # PoseEncoder widths; len - 1 stride-2 steps = log2(S / h)
    source_encoder: str = "conv"         # "conv", or a timm ViT name such as "vit_small_patch14_dinov2.lvd142m"
    source_pretrained: bool = False      # timm ViT only: load pretrained weights (HF hub, or source_checkpoint)
    source_checkpoint: str = ""          # timm ViT only: a local weight file, used instead of the hub
    source_image_size: int = 0           # size the source encoder sees; 0 = image_size (kept 0, so
                                         # dataclasses.replace(cfg, image_size=...) carries it along)
    source_widths: tuple = (8, 16, 32, 64)  # conv encoder: a stem, then one stride-2 stage per further width
    min_group_width: int = 1             # GroupNorm channels per group at least (group_norm says why)
    source_pixels: bool = False          # conv encoder: add each token's mean source colour (a colour skip)
    source_global: bool = False          # also add the pooled source tokens to the time embedding (AdaGN);
                                         # on in the CPU presets, where cross-attention alone lost the look
    source_queries: int = 4              # source_global: the tokens are pooled by this many learned queries
    source_colours: bool = False         # the pose map also carries the source in the target pose
                                         # (poses.source_map, 4 more channels)
    source_paint: str = "mean"           # source_colours: how. "mean": one mean colour per part
                                         # (paint_source_colours); "warp": the source's pixels moved part
                                         # by part (poses.warp_source: patterns, hair, hems travel too)
    dropout: float = 0.0

    def __post_init__(self):
        # note: a config rebuilt from JSON carries lists; tuples keep the dataclass hashable and equal
        for name in ("channel_mult", "attention_levels", "pose_widths", "source_widths"):
            setattr(self, name, tuple(getattr(self, name)))
        self._validate()

    @property
    def pose_input_channels(self) -> int:
        """Channels of the `pose` the forward takes: the pose map's, plus the painted source colours."""
        return self.pose_channels + (SOURCE_COLOUR_CHANNELS if self.source_colours else 0)

    def _validate(self):
        steps = len(self.pose_widths) - 1
        if self.image_size != self.latent_size * 2 ** steps:
            raise ValueError(f"UNetConfig: image_size {self.image_size} must be latent_size {self.latent_size} "
                             f"x 2**(len(pose_widths) - 1) = x {2 ** steps}; adjust pose_widths")
        if self.latent_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"UNetConfig: latent_size {self.latent_size} must be divisible by "
                             f"2**(len(channel_mult) - 1) = {2 ** (len(self.channel_mult) - 1)}; a preset with "
                             f"fewer levels fits (tiny48 for 48 px)")
        if self.source_paint not in SOURCE_PAINTS:
            raise ValueError(f"UNetConfig: source_paint {self.source_paint!r}: expected one of {', '.join(SOURCE_PAINTS)}")
        for level in self.attention_levels:
            if not 0 <= level < len(self.channel_mult):
                raise ValueError(f"UNetConfig: attention level {level} outside 0..{len(self.channel_mult) - 1}")
        # the middle block always has attention, at the last level's width
        levels = sorted(set(self.attention_levels) | {len(self.channel_mult) - 1})
        widths = [self.model_channels * self.channel_mult[level] for level in levels]
        if any(w % self.head_dim for w in widths):
            raise ValueError(f"UNetConfig: attention widths {widths} (levels {levels}) must be divisible by "
                             f"head_dim {self.head_dim}")
        factor = 2 ** (len(self.source_widths) - 1)
        if self.source_encoder == "conv" and (self.source_image_size or self.image_size) % factor:
            raise ValueError(f"UNetConfig: source image size {self.source_image_size or self.image_size} must be "
                             f"divisible by 2**(len(source_widths) - 1) = {factor}")


# 2 CPU cores, 64 px, latent 16x16x8 (the tiny VAE: downsample 4, 8 channels, see vae.py; training
# takes the channels from the VAE, pipeline.unet_config_for, so they are written here only for
# UNet("tiny") built alone); train.py's main job runs it at 32 px (latent 8x8x8), 800 steps of
# batch 32 (README). Narrow (32 channels) at 16x16 and 8x8 where convs cost the most per
# parameter, wider at 4x4 and 2x2 where they are cheap; attention only at 8x8 and below (64, 16
# and 4 queries).
_TINY = UNetConfig(
    image_size=64, latent_size=16, latent_channels=8, fusion_dim=128, context_dim=128,
    model_channels=32, channel_mult=(1, 1, 2, 4), num_res_blocks=1, attention_levels=(1, 2, 3),
    head_dim=32, ff_mult=2, pose_widths=(8, 16, 32), source_widths=(8, 16, 32, 64), min_group_width=4,
    source_pixels=True, source_global=True, source_colours=True, source_paint="warp")

PRESETS = {
    "tiny": _TINY,
    # tiny for 48 px (`python train.py --image-size 48 --unet tiny48`): a 12x12 latent halves only
    # twice (12, 6, 3), so one of tiny's two 32-wide levels goes and the widest (128) stays; about
    # as many parameters as tiny (4.10 M against 4.29 M at 32 px), attention at 6x6 and 3x3.
    "tiny48": dataclasses.replace(_TINY, image_size=48, latent_size=12, channel_mult=(1, 2, 4),
                                  attention_levels=(1, 2)),
    # 128 px, latent 32x32x4 (downsample 4): a better CPU run, or a quick GPU one.
    "small": UNetConfig(
        image_size=128, latent_size=32, fusion_dim=128, context_dim=256, model_channels=64,
        channel_mult=(1, 2, 2, 4), num_res_blocks=2, attention_levels=(1, 2, 3), head_dim=32, ff_mult=4,
        pose_widths=(16, 32, 64), source_widths=(16, 32, 64, 128), min_group_width=4,
        source_pixels=True, source_global=True, source_colours=True, source_paint="warp"),
    # 256 px on one GPU, latent 32x32x4 (SD VAE, downsample 8), SD-like widths 320/640/1280/1280,
    # attention at the three finest levels like SD; source tokens from DINOv2 ViT-B/14 at 224 px
    # (16 x 16 patches + 1 class token = 257 tokens), random init unless source_pretrained.
    "base": UNetConfig(
        image_size=256, latent_size=32, fusion_dim=768, context_dim=768, model_channels=320,
        channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=64, ff_mult=4,
        pose_widths=(16, 32, 96, 256), source_encoder="vit_base_patch14_dinov2.lvd142m",
        source_image_size=224, dropout=0.0),
}


def make_config(config) -> UNetConfig:
    """A preset name, a UNetConfig, or a dict of its fields (e.g. from a checkpoint) -> UNetConfig."""
    return resolve_config(config, UNetConfig, PRESETS, "UNet")


# ----------------------------------------------------------------------------- small helpers

def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of a layer to zero (see the callers for why) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a float time in [0, 1000]: (B,) -> (B, dim).

    The fastest frequency turns one radian per unit of t (so neighbouring diffusion steps
    differ) and the slowest 1 / max_period (so the whole [0, 1000] range stays distinguishable).
    Computed in float32 even under autocast: bf16 cannot resolve t * freq near 1000.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


# ----------------------------------------------------------------------------- building blocks

class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding enters as a scale and shift of the second norm (AdaGN)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, min_width: int = 1):
        super().__init__()
        self.norm1 = group_norm(in_ch, min_width)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, min_width)
        self.dropout = nn.Dropout(dropout)
        # zero-init (LDM): the block starts as the identity, so the deep UNet behaves like a
        # shallow one at init and trains stably; gradients still reach conv2 itself at once
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, h, w)
        emb_out = rearrange(self.emb_proj(F.silu(emb)), "b c -> b c 1 1")  # (B, 2 C_out, 1, 1)
        scale, shift = emb_out.chunk(2, dim=1)  # each (B, C_out, 1, 1)
        # (1 + scale): a zero embedding leaves the normalised features unchanged
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of x over a context (self-attention when context is x)."""

    def __init__(self, dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        # no biases on q, k, v (as in SD): a zero context then gives zero keys and values
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, heads, L, d)
        k = rearrange(self.to_k(context), "b n (h d) -> b h n d", h=self.heads)  # (B, heads, N, d)
        v = rearrange(self.to_v(context), "b n (h d) -> b h n d", h=self.heads)  # (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))  # (B, L, dim)


class GEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit: half of the projection gates the other half."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)  # each (B, L, mult * dim)
        return self.proj_out(self.dropout(value * F.gelu(gate)))  # (B, L, dim)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the source tokens, feed-forward."""

    def __init__(self, dim: int, context_dim: int, head_dim: int, ff_mult: int, dropout: float):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, dim, head_dim)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, context_dim, head_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), GEGLU(dim, ff_mult, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h)  # (B, L, dim)
        # the appearance transfer: every latent position looks up the source tokens
        x = x + self.cross_attn(self.norm2(x), context)  # (B, L, dim)
        return x + self.ff(self.norm3(x))  # (B, L, dim)


class SpatialTransformer(nn.Module):
    """Feature map -> tokens -> transformer blocks -> feature map, added back as a residual."""

    def __init__(self, channels: int, context_dim: int, cfg: UNetConfig):
        super().__init__()
        self.norm = group_norm(channels, cfg.min_group_width)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, context_dim, cfg.head_dim, cfg.ff_mult, cfg.dropout)
            for _ in range(cfg.transformer_depth))
        # zero-init (LDM): the block starts as the identity, like the ResBlocks
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = self.proj_in(rearrange(self.norm(x), "b c h w -> b (h w) c"))  # (B, hw, C)
        for block in self.blocks:
            tokens = block(tokens, context)  # (B, hw, C)
        tokens = self.proj_out(tokens)  # (B, hw, C)
        return x + rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)  # (B, C, h, w)


class Level(nn.Module):
    """One step of either path: a ResBlock, an optional SpatialTransformer, an optional upsample."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, attention: bool, upsample: bool, cfg: UNetConfig):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.min_group_width)
        self.attn = SpatialTransformer(out_ch, cfg.context_dim, cfg) if attention else None
        self.upsample = Upsample(out_ch) if upsample else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:  # fixed at construction: no data-dependent control flow
            x = self.attn(x, context)
        if self.upsample is not None:
            x = self.upsample(x)  # (B, C, 2h, 2w)
        return x


class Downsample(nn.Module):
    """Stride-2 3x3 conv; takes (and ignores) emb and context so the down path is one loop.

    note: not vae.Downsample (unlike Upsample, which is shared): this one pads symmetrically
    (padding=1), as SD's UNet does; the VAE's pads one row and column on the bottom and right only,
    because SD's VAE weights were trained that way. Either change would alter saved checkpoints.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, h/2, w/2)


# ----------------------------------------------------------------------------- condition encoders

class PoseEncoder(nn.Module):
    """Pixel-size pose map (B, P, S, S) -> features (B, model_channels, h, w), ControlNet-style.

    3x3 convs with SiLU and one stride-2 conv per factor of 2 between S and h. The last conv is
    zero-initialised (ControlNet's "zero convolution"): at the first step the branch adds
    exactly zero to the UNet's first feature map, so random pose features do not disturb the
    denoiser while it learns the basics (and a pretrained UNet would keep its behaviour). Its
    own weights get a gradient as soon as any gradient reaches the UNet's first feature map
    (its input is not zero), which is from the second step on: the UNet's zero-initialised
    `conv_out` passes no gradient upstream on the first step. Once they move, the earlier pose
    layers receive gradients too.
    """

    def __init__(self, pose_channels: int, widths: tuple, out_channels: int):
        super().__init__()
        layers = [nn.Conv2d(pose_channels, widths[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            # halve the size first, so the extra conv runs on 4x fewer pixels
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = zero_init(nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(pose))  # (B, out_channels, h, w)


# ----------------------------------------------------------------------------- the UNet

class UNet(nn.Module):
    """Conditional latent UNet: forward(x_t, t, pose, src_tokens, fusion) -> (B, C, h, w)."""

    def __init__(self, config="tiny"):
        super().__init__()
        cfg = self.config = make_config(config)
        mc = cfg.model_channels
        emb_dim = 4 * mc  # the LDM choice: the embedding is wider than the first level
        self.time_mlp = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # the global (fusion) embedding joins the time embedding, so it reaches every ResBlock
        self.fusion_mlp = (nn.Sequential(nn.Linear(cfg.fusion_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                           if cfg.fusion_dim > 0 else None)
        self.source_encoder = SourceEncoder(cfg)
        # the source's global look (see UNetConfig.source_global and the note in forward)
        self.source_queries, self.source_mlp = None, None
        if cfg.source_global:
            k, d = cfg.source_queries, cfg.context_dim
            self.source_mlp = nn.Sequential(nn.Linear(k * d, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.source_queries = nn.Parameter(torch.randn(k, d) * 0.02)  # (K, D), small: uniform attention at init
        self.num_source_tokens = self.source_encoder.num_tokens
        self.pose_encoder = PoseEncoder(cfg.pose_input_channels, cfg.pose_widths, mc)
        # with source_colours the painted colours also enter at the latent size, beside x_t (as SD's
        # inpainting UNet takes its masked image): a colour needs no strided convs to reach its place
        colour_in = SOURCE_COLOUR_CHANNELS if cfg.source_colours else 0
        self.conv_in = nn.Conv2d(cfg.latent_channels + colour_in, mc, 3, padding=1)
        self.down, skip_channels = self._build_down(emb_dim)
        ch = skip_channels[-1]
        # the middle always attends: at the coarsest level every position sees the whole body
        self.mid_res1 = ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.min_group_width)
        self.mid_attn = SpatialTransformer(ch, cfg.context_dim, cfg)
        self.mid_res2 = ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.min_group_width)
        self.up = self._build_up(emb_dim, skip_channels)
        out_ch = mc * cfg.channel_mult[0]
        self.norm_out = group_norm(out_ch, cfg.min_group_width)
        # zero-init (DiT, LDM): the first prediction is 0, the mean of both the noise and the
        # velocity targets, so training starts at a sensible loss instead of a random one
        self.conv_out = zero_init(nn.Conv2d(out_ch, cfg.latent_channels, 3, padding=1))

    def _build_down(self, emb_dim: int):
        cfg, ch = self.config, self.config.model_channels
        blocks, skip_channels = nn.ModuleList(), [ch]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out_ch = cfg.model_channels * mult
                blocks.append(Level(ch, out_ch, emb_dim, level in cfg.attention_levels, False, cfg))
                ch = out_ch
                skip_channels.append(ch)
            if level < len(cfg.channel_mult) - 1:
                blocks.append(Downsample(ch))
                skip_channels.append(ch)
        return blocks, skip_channels

    def _build_up(self, emb_dim: int, skip_channels: list):
        cfg, skip_channels = self.config, list(skip_channels)
        blocks, ch = nn.ModuleList(), skip_channels[-1]
        for level in reversed(range(len(cfg.channel_mult))):
            out_ch = cfg.model_channels * cfg.channel_mult[level]
            # one more block than on the way down: each consumes one skip, and the down path
            # also stored the output of conv_in and of every Downsample
            for i in range(cfg.num_res_blocks + 1):
                upsample = level > 0 and i == cfg.num_res_blocks
                blocks.append(Level(ch + skip_channels.pop(), out_ch, emb_dim,
                                    level in cfg.attention_levels, upsample, cfg))
                ch = out_ch
        return blocks

    def encode_source(self, image: torch.Tensor) -> torch.Tensor:
        """Source image (B, 3, S, S) in [-1, 1] -> tokens (B, N, D); call once per source."""
        return self.source_encoder(image)

    def _fill_dropped(self, x_t, pose, src_tokens, fusion):
        """None -> the zero tensor a dropped condition is, so None and explicit zeros agree."""
        cfg, b = self.config, x_t.shape[0]
        kw = dict(device=x_t.device, dtype=x_t.dtype)
        if pose is None:
            pose = torch.zeros(b, cfg.pose_input_channels, cfg.image_size, cfg.image_size, **kw)
        if src_tokens is None:
            src_tokens = torch.zeros(b, self.num_source_tokens, cfg.context_dim, **kw)
        if fusion is None and cfg.fusion_dim > 0:
            fusion = torch.zeros(b, cfg.fusion_dim, **kw)
        if fusion is not None and cfg.fusion_dim == 0:
            raise ValueError("UNet got fusion= but its config has fusion_dim=0 (no fusion input)")
        self._check_shapes(x_t, pose, src_tokens, fusion)
        return pose, src_tokens, fusion

    def _check_shapes(self, x_t, pose, src_tokens, fusion):
        # shape checks only (static under torch.compile): a clear message beats a conv error
        cfg = self.config
        want = {"x_t": (cfg.latent_channels, cfg.latent_size, cfg.latent_size),
                "pose": (cfg.pose_input_channels, cfg.image_size, cfg.image_size)}
        for name, tensor in (("x_t", x_t), ("pose", pose)):
            if tuple(tensor.shape[1:]) != want[name]:
                expected = ", ".join(map(str, want[name]))
                raise ValueError(f"UNet {name} has shape {tuple(tensor.shape)}, expected (B, {expected})")
        if src_tokens.shape[-1] != cfg.context_dim:
            raise ValueError(f"UNet src_tokens width {src_tokens.shape[-1]} != context_dim {cfg.context_dim}")
        if fusion is not None and fusion.shape[-1] != cfg.fusion_dim:
            raise ValueError(f"UNet fusion width {fusion.shape[-1]} != fusion_dim {cfg.fusion_dim}")

    def forward(self, x_t, t, pose=None, src_tokens=None, fusion=None) -> torch.Tensor:
        """x_t (B, C, h, w); t float (B,) or scalar in [0, 1000]; pose (B, P, S, S) in [0, 1];
        src_tokens (B, N, D); fusion (B, F). None means zeros (a dropped condition)."""
        pose, src_tokens, fusion = self._fill_dropped(x_t, pose, src_tokens, fusion)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])  # (B,)
        t_features = timestep_embedding(t, self.config.model_channels)  # (B, mc), float32
        emb = self.time_mlp(t_features.to(self.conv_in.weight.dtype))  # (B, E); .to: a model cast to bf16
        if self.fusion_mlp is not None:
            emb = emb + self.fusion_mlp(fusion)  # (B, E)
        if self.source_mlp is not None:
            # note: with cross-attention alone the tiny models ignored the source: swapping it moved
            # RPFM's output by 5 % of the sources' difference, and FPDM's tokens were ignored as well
            # (its look came through the fusion embedding alone; RESULTS.md, "appearance"). A latent
            # position must first learn WHERE in the source its part is before attention pays off.
            # A pooled summary of the source says WHAT the person wears at once, as a per-channel
            # scale and shift of every ResBlock (AdaGN), the way FPDM's fusion embedding enters.
            # A dropped source (zero tokens) pools to zero, so guidance's "no source" branch stays
            # one fixed input.
            emb = emb + self.source_mlp(self.pool_source(src_tokens))  # (B, E)
        x_in = x_t
        if self.config.source_colours:
            painted = F.adaptive_avg_pool2d(pose[:, -SOURCE_COLOUR_CHANNELS:], x_t.shape[-2:])  # (B, 4, h, w)
            x_in = torch.cat([x_t, painted.to(x_t.dtype)], dim=1)  # (B, C + 4, h, w)
        h = self.conv_in(x_in) + self.pose_encoder(pose)  # (B, mc, h, w): the pose enters here, as in FPDM
        skips = [h]
        for block in self.down:
            h = block(h, emb, src_tokens)  # (B, C_level, h', w'), or (B, C, h'/2, w'/2) after a Downsample
            skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb), src_tokens), emb)
        for block in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C_h + C_skip, h', w')
            h = block(h, emb, src_tokens)  # (B, C_level, h', w'), or (B, C_level, 2h', 2w') after an upsample
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, C, h, w)
        # note: under autocast the convs return bf16; hand back the caller's dtype
        return out.to(x_t.dtype)

    def pool_source(self, src_tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, K * D): K learned queries, each a softmax-weighted mean of the tokens.

        At init the queries are near zero, so each is the tokens' plain mean; trained, one can look
        for the top's colour and another for the trousers' (the mean alone scored torso r 0.45,
        four queries 0.53: RESULTS.md, "Diagnosis")."""
        scale = src_tokens.shape[-1] ** -0.5
        weights = torch.softmax(torch.einsum("kd,bnd->bkn", self.source_queries.to(src_tokens.dtype), src_tokens)
                                * scale, dim=-1)  # (B, K, N); zero tokens: uniform, so a dropped source pools to 0
        return torch.einsum("bkn,bnd->bkd", weights, src_tokens).flatten(1)  # (B, K * D)

    @torch.no_grad()
    def example_inputs(self, batch_size: int = 2) -> dict:
        """Valid random inputs for this model: exactly the keys x_t, t, pose, src_tokens, fusion."""
        cfg, device = self.config, self.conv_in.weight.device
        b, s, h = batch_size, cfg.image_size, cfg.latent_size
        fusion = None
        if cfg.fusion_dim > 0:  # fusion embeddings are unit-norm (fusion.py)
            fusion = F.normalize(torch.randn(b, cfg.fusion_dim, device=device), dim=-1)
        return {
            "x_t": torch.randn(b, cfg.latent_channels, h, h, device=device),
            "t": torch.rand(b, device=device) * 1000,
            "pose": torch.rand(b, cfg.pose_input_channels, s, s, device=device),
            "src_tokens": torch.randn(b, self.num_source_tokens, cfg.context_dim, device=device),
            "fusion": fusion,
        }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def time_training_step(preset: str, batch_size: int = 16, repeats: int = 5) -> tuple:
    """(wall s, process CPU s, GFLOP) of the fastest of `repeats` training steps on random data:
    encode_source + forward + backward + AdamW, as train.py does per batch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = UNet(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = model.example_inputs(batch_size)
    size = model.config.image_size
    source = torch.rand(batch_size, 3, size, size, device=inputs["x_t"].device) * 2 - 1

    def step():
        out = model(**dict(inputs, src_tokens=model.encode_source(source)))
        opt.zero_grad()
        F.mse_loss(out, torch.randn_like(out)).backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:  # the first step also warms up the kernels
        step()
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, counter.get_total_flops() / 1e9


@dataclass
class UNetCommand:
    """The flags of `python unet.py`: the presets' parameter counts, and optionally a timed step."""

    time: Optional[str] = option(None, "time a CPU training step of this preset", choices=list(PRESETS))
    batch_size: int = option(16, "images per timed training step")
    threads: int = option(0, "torch threads (0: torch's default)")


def main(argv=None):
    cfg, _ = parse_config(UNetCommand, argv, "UNet parameter counts; --time PRESET times a training step")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for preset in PRESETS:
        with torch.device("meta"):  # counts without allocating (base is ~1 B parameters)
            model = UNet(preset)
        total, source = count_parameters(model), count_parameters(model.source_encoder)
        print(f"{preset:6s} {total:>11,d} parameters ({total - source:>11,d} UNet + {source:>10,d} source encoder)")
    if cfg.time:
        wall, cpu, gflop = time_training_step(cfg.time, cfg.batch_size)
        print(f"{cfg.time}: training step, batch {cfg.batch_size}, {gflop:.1f} GFLOP, {torch.get_num_threads()} "
              f"threads: {wall:.3f} s wall, {cpu:.3f} s process CPU (fastest of 5)")


if __name__ == "__main__":
    main()
