"""The source photo as tokens: what the UNet's cross-attention reads to learn the person's look.

Concept. The source image is encoded ONCE per photo (streaming reuses the tokens for every frame)
into N tokens of width D, read by every transformer block of the UNet (unet.py). Two backbones:

- `ConvTokenizer`, a small conv encoder trained from scratch with the UNet (the CPU presets): a
  stem, one stride-2 stage per further width, a learned position embedding, and on the CPU presets a
  colour skip (each token also gets its cell's mean colour; the class docstring says why);
- a timm ViT by name (DINOv2 ViT-B/14 in the base preset), its class token and one token per patch.

Weights: `source_encoder` takes "conv" or a timm model name. `source_checkpoint=PATH` loads a local
weight file (e.g. DINOv2 ViT-B/14; `python train.py --source-checkpoint PATH`) through timm's
pretrained_cfg_overlay, which also resizes the position embedding. `source_pretrained=True` asks timm
to fetch the weights from the Hugging Face hub, which needs the internet. With pretrained weights the
backbone is frozen and only its projection trains (as FPDM keeps its encoder's features); from random
init (the default) the whole encoder trains with the UNet. A missing file raises FileNotFoundError,
and a failed download a one-line ValueError.

`group_norm` lives here because its note is about this encoder (the colours its norms removed); the
UNet's ResBlocks use the same helper.

Papers: Oquab et al. 2023, DINOv2 (arXiv 2304.07193); Dosovitskiy et al. 2021, ViT (arXiv 2010.11929);
Lee et al. 2024, FPDM (arXiv 2412.07333), whose source encoder is a frozen pretrained ViT.

Run: python unet.py (parameter counts: UNet + source encoder). Test: python -m pytest -q tests/test_unet.py

Shape letters: B batch, S pixel size of the source image (square), N tokens, W backbone width,
D context (token) width, g the conv encoder's token grid (N = g * g).
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def group_norm(channels: int, min_width: int = 1) -> nn.GroupNorm:
    """32 groups as in the LDM UNet, fewer where a group would hold under `min_width` channels
    (UNetConfig.min_group_width: 4 in the CPU presets, 1 in checkpoints written before it existed).

    note: a group of ONE channel is an instance norm: it removes each channel's per-image mean,
    and in the source encoder's first layers those means ARE the colours. With 32 groups on the
    CPU presets' 8-32-channel layers, every source-encoder norm was one, and the source tokens
    carried little colour (a linear probe from them to the source's torso colour: R^2 0.16; RESULTS.md,
    "Diagnosis"). The GPU presets (320 channels and up, 10 per group) are unchanged.
    """
    groups = math.gcd(32, channels)  # gcd keeps narrow CPU widths (e.g. 48) valid
    while groups > 1 and channels // groups < min_width:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=1e-6)



class ConvTokenizer(nn.Module):
    """Small conv encoder for the CPU presets: image (B, 3, S, S) -> tokens (B, N, W).

    A stem conv, then one stride-2 stage per further width; the grid is flattened into
    N = (S / 2**(len(widths) - 1))**2 tokens of width W = widths[-1]. A learned position
    embedding is added because attention is blind to token order: without it a target
    position could not ask for "the source's left sleeve", only for a colour.

    The colour skip (`pixels`, on in the CPU presets): each token also gets a linear map of its
    cell's mean source colour. Trained from scratch for a few hundred steps, the conv stack never
    learnt to carry colour (a linear probe from its tokens to the source's torso colour: R^2 0.16;
    0.79 with the skip),
    because the UNet had not yet learnt to read the tokens, and nothing asked it to: a loop only
    the colours themselves break. A pretrained ViT (base preset) carries them already.
    """

    def __init__(self, widths: tuple, image_size: int, min_width: int = 1, pixels: bool = False):
        super().__init__()
        layers = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [group_norm(c_in, min_width), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       group_norm(c_out, min_width), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.num_tokens = (image_size // 2 ** (len(widths) - 1)) ** 2
        self.pos = nn.Parameter(torch.randn(1, self.num_tokens, widths[-1]) * 0.02)
        self.norm = nn.LayerNorm(widths[-1])
        self.width = widths[-1]
        self.grid = image_size // 2 ** (len(widths) - 1)
        # the colour skip (UNetConfig.source_pixels): each token also gets its cell's mean colour
        self.pixels = nn.Linear(3, widths[-1]) if pixels else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(self.body(image), "b c h w -> b (h w) c")  # (B, N, W)
        if self.pixels is not None:
            cells = F.adaptive_avg_pool2d(image, self.grid)  # (B, 3, g, g): the mean colour of each token's cell
            tokens = tokens + self.pixels(rearrange(cells, "b c h w -> b (h w) c"))  # (B, N, W)
        return self.norm(tokens + self.pos)  # (B, N, W)


def create_timm_vit(name: str, image_size: int, pretrained: bool, checkpoint: str) -> nn.Module:
    """A timm ViT without its classifier head. Weights: random (default), the HF hub, or a local file.

    note: timm's pretrained=True downloads from the Hugging Face hub, which needs the internet;
    a local file is loaded through pretrained_cfg_overlay=dict(file=PATH), which also resizes
    the position embedding to image_size. Failures become one clear ValueError.
    """
    import timm  # imported here so the CPU presets do not need timm

    kwargs = dict(num_classes=0, img_size=image_size)
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"source encoder checkpoint {checkpoint} (config source_checkpoint) not found")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(checkpoint))
        pretrained = True
    if not timm.is_model(name):
        raise ValueError(f"config source_encoder {name!r} is neither 'conv' nor a timm model name")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # download / file-format errors arrive as many different types
        where = checkpoint or "the Hugging Face hub (needs the internet)"
        raise ValueError(f"could not load pretrained weights for {name} from {where}: {err}; "
                         "set source_checkpoint=PATH to a local weight file, or source_pretrained=False") from err


class SourceEncoder(nn.Module):
    """Source image (B, 3, S, S) in [-1, 1] -> tokens (B, N, D) for cross-attention.

    Either the small `ConvTokenizer` ("conv") or a timm ViT by name (DINOv2 for the base preset,
    whose forward_features gives the class token and one token per patch); a Linear maps the
    backbone width to context_dim D. It is a submodule of the UNet, called once per source image
    so that streaming can reuse the tokens for every frame.

    What trains (as FPDM does): with pretrained ViT weights (source_pretrained or a local
    source_checkpoint) the backbone is frozen and only the projection trains, so the pretrained
    features are kept; from random init (the offline default) the whole encoder trains, since
    frozen random features would only be noise. `describe()` says which, for the training log.
    """

    def __init__(self, cfg):
        super().__init__()
        self.image_size = cfg.source_image_size or cfg.image_size
        self.is_vit = cfg.source_encoder != "conv"
        if self.is_vit:
            self.backbone = create_timm_vit(cfg.source_encoder, self.image_size, cfg.source_pretrained,
                                            cfg.source_checkpoint)
            self.num_tokens = self.backbone.patch_embed.num_patches + self.backbone.num_prefix_tokens
            width = self.backbone.num_features
            # the ViT expects images normalised like its pretraining data (ImageNet statistics)
            stats = self.backbone.pretrained_cfg
            self.register_buffer("mean", torch.tensor(stats["mean"]).view(1, 3, 1, 1), persistent=False)  # (1, 3, 1, 1)
            self.register_buffer("std", torch.tensor(stats["std"]).view(1, 3, 1, 1), persistent=False)  # (1, 3, 1, 1)
            self.pretrained = bool(cfg.source_pretrained or cfg.source_checkpoint)
            self.backbone.requires_grad_(not self.pretrained)  # frozen pretrained features, as FPDM
        else:
            self.backbone = ConvTokenizer(cfg.source_widths, self.image_size, cfg.min_group_width,
                                          cfg.source_pixels)
            self.num_tokens, width = self.backbone.num_tokens, self.backbone.width
            self.pretrained = False
        self.proj = nn.Linear(width, cfg.context_dim)
        self.source = cfg.source_checkpoint or ("the Hugging Face hub" if self.pretrained else "")

    def describe(self) -> str:
        """One line for the training log: which backbone, which weights, what trains."""
        name = type(self.backbone).__name__ if not self.is_vit else self.backbone.default_cfg.get(
            "architecture", "ViT")
        if self.pretrained:
            return f"{name}, pretrained ({self.source}), frozen: only its projection trains"
        return f"{name}, random init, trained with the UNet"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear",
                                  antialias=True, align_corners=False)  # (B, 3, S', S')
        if self.is_vit:
            image = ((image + 1) / 2 - self.mean) / self.std  # [-1, 1] -> ImageNet-normalised
            tokens = self.backbone.forward_features(image)  # (B, N, W)
        else:
            tokens = self.backbone(image)  # (B, N, W)
        return self.proj(tokens)  # (B, N, D)
