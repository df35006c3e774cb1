"""FPDM stage 1: the Image-Pose Fusion model (shared CLIP encoder + Combiner + InfoNCE).

FPDM conditions its diffusion model on a *fusion embedding* of (source image, target pose).
Stage 1 learns that embedding by contrastive learning: one CLIP vision transformer, shared
between photos and rendered pose maps, embeds the source image s, the target pose p and the
target image t; a Combiner fuses (s, p) into f, and InfoNCE pulls each target t towards its own
f and away from the batch's other f's (the source-enhanced loss: also away from the sources).
Stage 2 (diffusion.py / unet.py) then receives `FusionModel.embed(source, pose)` as a frozen
global condition.

    source ─┐                                   ┌─ Combiner ─> f (unit norm) ─┐
    pose   ─┼─> shared CLIP ViT ─> s, p, t ──── ┘                            ├─> InfoNCE
    target ─┘                            t ────────────────────────────────── ┘

Facts taken from the FPDM paper and its public code (dhlee-work/FPDM): ViT-L/14 CLIP
(openai), *fine-tuned* in stage 1 (not frozen), AdamW lr 1e-5, weight decay 1e-4, batch 48,
224 px, fixed temperature 0.07, logits of targets against fused embeddings (each target row
picks its fused column), the source-enhanced variant appends the source embeddings to both
sides, and a small L1 term (weight 1e-4) between source and fused embeddings. FPDM also
trains an optional patch-level attention branch; it is left out here (only the global
embedding reaches stage 2).

The parts:
  - Encoder: open_clip's own vision tower (`_build_vision_tower`, what open_clip's CLIP uses), so
    a named architecture (ViT-L-14) and its pretrained tag (openai) load as in open_clip. Photos in
    [-1, 1] and pose maps in [0, 1] are mapped to [0, 1], resized to the encoder's size and
    normalised with CLIP's mean and std; only the first 3 pose channels (the RGB skeleton) are
    used. `freeze_encoder=True` freezes it.
  - Combiner (CLIP4Cir): image and pose projections (ReLU, dropout 0.5), their concatenation
    through a combiner layer, a dynamic scalar lambda = sigmoid(MLP) in (0, 1), and the output
    normalize(W_out h + lambda pose + (1 - lambda) image). At 768 everywhere: 4,133,377 parameters.
  - Losses: `info_nce(fused, target)`: logits cos(t_i, f_j) / tau, labels on the diagonal.
    `source_enhanced_info_nce(fused, target, source)`: queries [t; s], keys [f; s], a 2B x 2B
    logit matrix, so a person's own source photo is a hard negative and the fusion must carry the
    pose change instead of copying the source. The config field `source_enhanced` (default True)
    chooses between them at every `loss` call (`python train.py --fusion-loss baseline`).
  - Retrieval (the paper's Table 2): for every test pair, rank its true target among all distinct
    test targets by cosine similarity; R@1, R@3, R@5 (fractions) and the average rank (1 is
    perfect). The "source alone" row ranks by the source embedding (the paper's A1 row).

    model = FusionModel("tiny")              # or "vit_l14", a FusionConfig, or a dict of its fields
    loss, parts = model.loss(batch)          # a PairDataset batch; parts: nce, l1, lambda, acc
    f = model.embed(source, target_pose)     # (B, D), unit norm: stage 2's condition
    table = evaluate_retrieval(model, test_loader)   # {"source alone": {...}, "fused": {...}}
    model = FusionModel(saved_config, load_pretrained=False)   # from a checkpoint, no download

  preset   encoder                                         input               D    encoder      Combiner
  tiny     random-init ViT, width 128, 4 layers, patch 8   32 px (16 tokens)   128      836,864    361,857
  vit_l14  CLIP ViT-L/14, pretrained "openai", QuickGELU   224 px              768  303,966,208  4,133,377

Weights: nothing downloads unless asked; `tiny` is random init. `vit_l14` asks open_clip for the
openai weights (its Hugging Face cache, or a download). Offline, download the Hugging Face repo
timm/vit_large_patch14_clip_224.openai (file open_clip_pytorch_model.bin) once and pass its local
path as `pretrained` (`python train.py --fusion-pretrained PATH`). A bad tag or path, or a failed
download, raises one FileNotFoundError line that says what to do.

Papers:
  - FPDM: Lee et al., "Fusion Embedding for Pose-Guided Person Image Synthesis with
    Diffusion Model", arXiv:2412.07333.
  - Combiner: Baldrati et al., "Effective conditioned and composed image retrieval combining
    CLIP-based features" (CLIP4Cir), CVPR 2022.
  - CLIP: Radford et al., arXiv:2103.00020. InfoNCE: van den Oord et al., arXiv:1807.03748.

Run: trained by `python train.py --method fusion` (train.py owns the loop:
`loss, parts = model.loss(batch); loss.backward(); opt.step()`).
Test: `python -m pytest -q tests/test_fusion.py`.

Shapes: B batch, C channels, S input side, R encoder image size, D embedding dim,
P projection dim, Hd hidden dim, N queries, M gallery items.
"""

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Union

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIPVisionCfg, _build_vision_tower

from cli import resolve_config


# --------------------------------------------------------------------------- config

@dataclass
class FusionConfig:
    """Everything needed to rebuild a FusionModel (stored in checkpoints as a dict)."""
    # open_clip architecture name (e.g. "ViT-L-14"); "" = the custom vision tower below.
    model_name: str = ""
    # open_clip pretrained tag ("openai") or a local weights file; "" = random init (offline).
    pretrained: str = ""
    # OpenAI's CLIP was trained with QuickGELU; open_clip's plain "ViT-L-14" uses nn.GELU.
    quick_gelu: bool = False
    # custom vision tower (used when model_name == ""); for a named model these two
    # (image_size, embed_dim) are overwritten with the model's own values.
    image_size: int = 32
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    head_width: int = 32
    mlp_ratio: float = 4.0
    embed_dim: int = 128
    # Combiner sizes (FPDM: 768 / 768 for ViT-L/14).
    projection_dim: int = 256
    hidden_dim: int = 256
    # training objective
    source_enhanced: bool = True
    temperature: float = 0.07
    l1_weight: float = 1e-4
    freeze_encoder: bool = False


FUSION_PRESETS = {
    # random-init ViT, 32 px, patch 8 (16 tokens), width 128, 4 layers: about 0.35 s per
    # batch-32 step on one CPU core; at 64 px (64 tokens) a step cost 4x more and 80 steps
    # did not get past "fused = source" in the same CPU time.
    "tiny": FusionConfig(),
    # FPDM's encoder: CLIP ViT-L/14 with OpenAI's weights (needs the weights, see README).
    "vit_l14": FusionConfig(model_name="ViT-L-14", pretrained="openai", quick_gelu=True,
                            image_size=224, embed_dim=768, projection_dim=768, hidden_dim=768),
}


def fusion_config(spec: Union[str, FusionConfig, dict]) -> FusionConfig:
    """A preset name, a FusionConfig or a dict of its fields -> FusionConfig."""
    return resolve_config(spec, FusionConfig, FUSION_PRESETS, "fusion")


# --------------------------------------------------------------------------- encoder

def _pretrained_error(config: FusionConfig, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"fusion: pretrained weights {config.pretrained!r} for open_clip model {config.model_name!r} "
        f"could not be loaded ({reason}); offline, download them once (e.g. the Hugging Face repo "
        f"timm/vit_large_patch14_clip_224.openai, file open_clip_pytorch_model.bin) and pass its local "
        f"path as the pretrained value, or pass '' for random init")


def _load_pretrained_tower(config: FusionConfig) -> nn.Module:
    """open_clip.create_model with weights, keeping only the vision tower."""
    tags = open_clip.list_pretrained_tags_by_model(config.model_name)
    if config.pretrained not in tags and not os.path.isfile(config.pretrained):
        raise _pretrained_error(config, f"neither a known tag {tags} nor an existing file")
    try:
        clip = open_clip.create_model(config.model_name, pretrained=config.pretrained,
                                      force_quick_gelu=config.quick_gelu)
    except (RuntimeError, OSError, ValueError) as err:  # download failure, bad file
        raise _pretrained_error(config, str(err).splitlines()[0][:200] or type(err).__name__) from None
    return clip.visual  # note: the text tower is dropped here; only images and poses are encoded


def build_encoder(config: FusionConfig, load_pretrained: bool = True) -> nn.Module:
    """The open_clip vision transformer: image (B, 3, R, R) -> projected embedding (B, D).

    load_pretrained=False builds the same architecture without reading config.pretrained
    (for a checkpoint that already holds the weights).
    """
    if config.model_name and config.pretrained and load_pretrained:
        return _load_pretrained_tower(config)
    if config.model_name:
        model_cfg = open_clip.get_model_config(config.model_name)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip model_name {config.model_name!r}; "
                             f"see open_clip.list_models()")
        return _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"],
                                   quick_gelu=config.quick_gelu)
    if config.width % config.head_width:
        raise ValueError(f"FusionConfig width {config.width} must be a multiple of head_width {config.head_width}")
    vision_cfg = CLIPVisionCfg(layers=config.layers, width=config.width, head_width=config.head_width,
                               mlp_ratio=config.mlp_ratio, patch_size=config.patch_size,
                               image_size=config.image_size)
    return _build_vision_tower(config.embed_dim, vision_cfg, quick_gelu=config.quick_gelu)


# --------------------------------------------------------------------------- combiner

class Combiner(nn.Module):
    """CLIP4Cir's Combiner as FPDM uses it, fusing an image and a pose embedding.

        x̃ = Dropout(ReLU(W_x x)),  p̃ = Dropout(ReLU(W_p p))          (projections, D -> P)
        c = [p̃; x̃]                                                   (2P)
        h = Dropout(ReLU(W_c c))                                      (Hd)
        λ = σ(W_2 Dropout(ReLU(W_1 c)))  ∈ (0, 1)                     (dynamic scalar)
        f = normalize(W_out h + λ·p + (1 − λ)·x)                      (D, unit norm)

    The residual mix λ·p + (1 − λ)·x lets the network start close to a blend of its two
    inputs and learn only the correction W_out h. Dropout is 0.5 everywhere, as in CLIP4Cir.
    With clip_dim = projection_dim = hidden_dim = 768 it has 4,133,377 parameters.
    """

    def __init__(self, clip_dim: int, projection_dim: int, hidden_dim: int):
        super().__init__()
        self.image_projection = nn.Linear(clip_dim, projection_dim)
        self.pose_projection = nn.Linear(clip_dim, projection_dim)
        self.combiner_layer = nn.Linear(2 * projection_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, clip_dim)
        self.dynamic_scalar = nn.Sequential(nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(),
                                            nn.Dropout(0.5), nn.Linear(hidden_dim, 1), nn.Sigmoid())
        self.dropout = nn.Dropout(0.5)  # stateless, so one module serves all three places

    def combine(self, image: torch.Tensor, pose: torch.Tensor):
        """(B, D), (B, D) -> (unnormalised fused (B, D), λ (B, 1))."""
        pose_proj = self.dropout(F.relu(self.pose_projection(pose)))  # (B, P)
        image_proj = self.dropout(F.relu(self.image_projection(image)))  # (B, P)
        joint = torch.cat([pose_proj, image_proj], dim=-1)  # (B, 2P)
        hidden = self.dropout(F.relu(self.combiner_layer(joint)))  # (B, Hd)
        lam = self.dynamic_scalar(joint)  # (B, 1)
        return self.output_layer(hidden) + lam * pose + (1 - lam) * image, lam

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """(B, D), (B, D) -> fused embedding (B, D), unit norm."""
        fused, _ = self.combine(image, pose)
        return F.normalize(fused, dim=-1)


# --------------------------------------------------------------------------- losses

def info_nce(fused: torch.Tensor, target: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """FPDM's baseline InfoNCE, in the target -> fused direction.

        ℓ_ij = cos(t_i, f_j) / τ                                      (B × B logits)
        L = −(1/B) Σ_i log( exp ℓ_ii / Σ_j exp ℓ_ij )

    i.e. cross-entropy with the labels on the diagonal: each target must pick its own fused
    embedding among the batch's fused embeddings. τ = 0.07 is fixed (not learned) as in FPDM.
    """
    logits = F.normalize(target, dim=-1) @ F.normalize(fused, dim=-1).T / temperature  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def source_enhanced_info_nce(fused: torch.Tensor, target: torch.Tensor, source: torch.Tensor,
                             temperature: float = 0.07) -> torch.Tensor:
    """FPDM's source-enhanced InfoNCE: the sources appended to both sides.

        q = [t_1 … t_B; s_1 … s_B],  k = [f_1 … f_B; s_1 … s_B]      (2B × D each)
        ℓ_ij = cos(q_i, k_j) / τ                                      (2B × 2B logits)
        L = −(1/2B) Σ_i log( exp ℓ_ii / Σ_j exp ℓ_ij )

    Row i ≤ B now also has the sources as negatives, among them s_i: the person's own
    source photo, naturally close to t_i, must score below f_i, so the fusion has to carry
    the pose change and cannot just copy the source. Rows B+i (s_i against itself) push
    every fused embedding away from the sources the same way.
    """
    queries = torch.cat([target, source], dim=0)  # (2B, D)
    keys = torch.cat([fused, source], dim=0)  # (2B, D)
    # info_nce(fused, target) scores rows of `target` against columns of `fused`: the keys take
    # the fused side, the queries the target side
    return info_nce(fused=keys, target=queries, temperature=temperature)


def source_l1(fused: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """FPDM's small L1 term between source and fused embeddings (weighted 1e-4 in the loss).

        L1 = (1/BD) Σ_i ‖f_i − s_i/‖s_i‖‖₁

    note: FPDM's code subtracts the raw (unnormalised) source embedding; we compare unit
    vectors so the term's scale does not depend on the encoder's output norm.
    """
    return (fused - F.normalize(source, dim=-1)).abs().mean()


# --------------------------------------------------------------------------- model

class FusionModel(nn.Module):
    """Shared CLIP vision encoder + Combiner; `loss(batch)` is one stage-1 training step's loss.

    `FusionModel(config, load_pretrained=False)` rebuilds a trained model from its stored
    config without fetching config.pretrained again (its state dict is loaded afterwards).
    """

    def __init__(self, config: Union[str, FusionConfig, dict] = "tiny", load_pretrained: bool = True):
        super().__init__()
        config = fusion_config(config)
        self.encoder = build_encoder(config, load_pretrained)
        size = self.encoder.image_size  # open_clip keeps (R, R)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.embed_dim = int(self.encoder.output_dim)
        # a named open_clip model decides these two; keep the stored config truthful
        self.config = dataclasses.replace(config, image_size=self.image_size, embed_dim=self.embed_dim)
        self.combiner = Combiner(self.embed_dim, config.projection_dim, config.hidden_dim)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
        # CLIP's per-channel statistics; not saved, they are constants of the encoder family
        self.register_buffer("clip_mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)

    def _prepare(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> CLIP input (B, 3, R, R): resized, CLIP-normalised."""
        x01 = x01.to(self.clip_mean.device, self.clip_mean.dtype)
        if x01.shape[-2:] != (self.image_size, self.image_size):
            # note: a 256×176 photo is stretched to a square, the same convention as the UNet
            x01 = F.interpolate(x01, size=(self.image_size, self.image_size), mode="bicubic",
                                align_corners=False, antialias=True)  # (B, 3, R, R)
        return (x01 - self.clip_mean) / self.clip_std

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> CLIP embedding (B, D), not normalised."""
        return self.encoder(self._prepare((x + 1) / 2))

    def encode_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """Pose map (B, P, H, W) in [0, 1] -> embedding (B, D) with the *same* encoder.

        Only the first 3 channels (the rendered RGB skeleton) are used: FPDM feeds the pose
        picture to CLIP like a photo; heatmap channels, if present, are ignored here.
        """
        return self.encoder(self._prepare(pose[:, :3]))

    def forward(self, source: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Source image (B, 3, H, W) in [-1, 1], target pose (B, P, H, W) -> fused (B, D), unit norm."""
        return self.combiner(self.encode_image(source), self.encode_pose(pose))

    @torch.no_grad()
    def embed(self, source: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Stage 2's global condition: forward() in eval mode (no dropout), no gradient."""
        was_training = self.training
        self.eval()
        fused = self(source, pose)  # (B, D)
        self.train(was_training)
        return fused

    def _encode_triplet(self, source, target, pose):
        """One encoder pass over the 3B inputs (faster than three passes): -> s, t, p (B, D) each."""
        images = torch.cat([self._prepare((source + 1) / 2), self._prepare((target + 1) / 2),
                            self._prepare(pose[:, :3])], dim=0)  # (3B, 3, R, R)
        return self.encoder(images).chunk(3, dim=0)  # 3 × (B, D)

    def loss(self, batch: dict):
        """PairDataset batch (keys source, target, target_pose) -> (loss, parts).

            L = InfoNCE (baseline or source-enhanced, by config.source_enhanced)
                + l1_weight · L1(f, s)

        parts holds detached 0-d tensors: "nce", "l1", "lambda" (mean λ), "acc" (in-batch
        top-1 of target -> fused), cheap to log with float().
        """
        source, target, pose = batch["source"], batch["target"], batch["target_pose"]
        s, t, p = self._encode_triplet(source, target, pose)
        fused, lam = self.combiner.combine(s, p)
        fused = F.normalize(fused, dim=-1)  # (B, D)
        temp = self.config.temperature
        if self.config.source_enhanced:
            nce = source_enhanced_info_nce(fused, t, s, temp)
        else:
            nce = info_nce(fused, t, temp)
        l1 = source_l1(fused, s)
        with torch.no_grad():
            sims = F.normalize(t, dim=-1) @ fused.T  # (B, B)
            acc = (sims.argmax(dim=1) == torch.arange(len(sims), device=sims.device)).float().mean()
        parts = {"nce": nce.detach(), "l1": l1.detach(), "lambda": lam.detach().mean(), "acc": acc}
        return nce + self.config.l1_weight * l1, parts


# --------------------------------------------------------------------------- retrieval

def retrieval_metrics(queries: torch.Tensor, gallery: torch.Tensor,
                      labels: Optional[torch.Tensor] = None) -> dict:
    """Rank each query's true gallery item by cosine similarity (the FPDM paper's Table 2).

    queries (N, D), gallery (M, D); labels (N,) = index of query n's match in the gallery
    (default n, i.e. gallery[n] answers queries[n]).
        rank_n = 1 + #{m : cos(q_n, g_m) > cos(q_n, g_{labels_n})}
    note: ties count in the true item's favour (strict >). Returns floats: R@k = fraction of
    queries with rank ≤ k (in [0, 1]); avg_rank = mean rank (1 is perfect).
    """
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T  # (N, M)
    if labels is None:
        labels = torch.arange(len(sims), device=sims.device)
    true = sims.gather(1, labels.view(-1, 1).to(sims.device))  # (N, 1)
    ranks = 1 + (sims > true).sum(dim=1).float()  # (N,)
    out = {f"R@{k}": (ranks <= k).float().mean().item() for k in (1, 3, 5)}
    out["avg_rank"] = ranks.mean().item()
    return out


@torch.no_grad()
def collect_embeddings(model: FusionModel, loader) -> dict:
    """Embeddings of a whole loader: source (N, D), fused (N, D), target (N, D), target names."""
    was_training = model.training
    model.eval()
    source, fused, target, names = [], [], [], []
    for batch in loader:
        s, t, p = model._encode_triplet(batch["source"], batch["target"], batch["target_pose"])
        source.append(s)
        fused.append(model.combiner(s, p))
        target.append(t)
        names.extend(batch.get("target_name", [None] * len(s)))
    model.train(was_training)
    return {"source": torch.cat(source), "fused": torch.cat(fused),
            "target": torch.cat(target), "target_name": names}


def evaluate_retrieval(model: FusionModel, loader) -> dict:
    """For every pair, rank its true target among all (distinct) targets of the loader.

    Returns {"source alone": metrics, "fused": metrics}: the first ranks by the source
    embedding alone (the paper's A1 reference row), the second by the fused embedding.
    Targets that occur in several pairs enter the gallery once (by target_name), so an
    identical image never competes with itself.
    note: DeepFashion-style pairs run both ways, so a pair's own source photo is usually in
    the gallery too; "source alone" then always ranks it first (R@1 = 0), and a fused
    embedding only reaches R@1 by moving closer to the target than to its own source,
    which is what the source-enhanced loss trains for.
    """
    emb = collect_embeddings(model, loader)
    names = emb["target_name"]
    if any(n is None for n in names):
        names = list(range(len(names)))  # no names: every pair's target is distinct
    first_row = {}  # target name -> first pair that has it
    for row, name in enumerate(names):
        first_row.setdefault(name, row)
    index_of = {name: k for k, name in enumerate(first_row)}  # name -> gallery index
    gallery = emb["target"][list(first_row.values())]  # (M, D)
    labels = torch.tensor([index_of[name] for name in names], device=gallery.device)  # (N,)
    return {"source alone": retrieval_metrics(emb["source"], gallery, labels),
            "fused": retrieval_metrics(emb["fused"], gallery, labels)}
