"""The one training script: VAE, fusion embedding (FPDM stage 1), FPDM, RPFM and RPFM's reflow student.

Every method is the same loop, written out once in `train()` in the order a student reads it:

    batch -> (VAE encode, no grad) -> loss -> backward -> clip -> step -> EMA -> log
          -> every N steps: sample grid -> checkpoint

What changes between methods is only the `Stage` (which network trains, what its loss is,
what its grid shows). FPDM and RPFM even share the stage: the same conditional latent UNet and
loop. What differs is the process (`diffusion.Diffusion` or `flow_matching.FlowMatching`, chosen
in pipeline.make_process) and, with it, FPDM's extras: the fusion embedding as a third condition,
offset noise, and on the tiny preset v-prediction. The README's table lists every difference.

Stages chain themselves: `--method rpfm` first trains (or reuses) the VAE, `--method fpdm`
the VAE and the fusion model, `--method reflow` the VAE and the RPFM teacher, each saved as
`<out>/<stage>.pt` and reused by the next run. Reflow has one more step between teacher and
student: the couplings (`<out>/reflow_couplings.pt`), the teacher's guided ODE solved once per
training pair, resumable like a checkpoint (flow_matching.Reflow explains why they help).

Papers:
  FPDM  Lee et al., Fusion Embedding for Pose-Guided Person Image Synthesis with Diffusion Model
        (arXiv 2412.07333)
  RPFM  Jeong et al., Real-Time Person Image Synthesis Using a Flow Matching Model (arXiv 2505.03562),
        on flow matching, Lipman et al. (arXiv 2210.02747)
  Reflow  Liu et al., Flow Straight and Fast (arXiv 2209.03003); guidance distilled as InstaFlow,
        Liu et al. (arXiv 2309.06380)
  LDM   Rombach et al., High-Resolution Image Synthesis with Latent Diffusion (arXiv 2112.10752)

Run:
  python train.py --method rpfm                 # the main job: tiny preset, CPU, < 10 minutes
  python train.py --method fpdm                 # VAE -> fusion -> latent diffusion
  python train.py --method reflow               # VAE -> RPFM teacher -> couplings -> 2-step student
  python train.py --method fusion --fusion-loss both   # FPDM's Table 2: retrieval, both InfoNCE losses
  torchrun --nproc_per_node=2 train.py --method rpfm   # DistributedDataParallel
  python train.py --help                        # every flag, generated from TrainConfig

Pretrained weights (all optional; the CPU presets need none and download nothing):
  --vae-ckpt DIR             Stable Diffusion's VAE: a diffusers AutoencoderKL folder (config.json +
                             diffusion_pytorch_model.safetensors), loaded by vae.load_diffusers_vae
  --fusion-pretrained FILE   CLIP ViT-L/14: open_clip_pytorch_model.bin of
                             timm/vit_large_patch14_clip_224.openai, or an open_clip tag (downloads)
  --source-checkpoint FILE   DINOv2 ViT-B/14, a timm weight file: frozen, only its projection trains
A missing file is one line naming it, never a traceback.

Shape letters: B batch, C channels, H W image height/width, h w latent height/width,
N source tokens, D embedding width.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import data
import flow_matching
import fusion
import unet as unet_lib
import vae as vae_lib
import cli
import couplings
from cli import option
from guidance import INDEPENDENT_DROP, JOINT_DROP
from scoring import RETRIEVAL_COLUMNS, RETRIEVAL_FOOTER, print_table  # the one table printer
from distributed import (Dist, EpochBatches, FlipIndexed, check_ranks_agree, rng_states, seed_everything,
                         setup_distributed)
from pipeline import (MODEL_PRESETS, PRECISIONS, autocast_for, batch_keypoints, build_cond, component, enlarge,
                      frozen, hide_source_pose, load_checkpoint, load_fusion, load_vae, make_process,
                      sample_latents, save_checkpoint, unet_config_for)

METHODS = ("vae", "fusion", "fpdm", "rpfm", "reflow")
FUSION_LOSSES = ("baseline", "source_enhanced")  # InfoNCE as CLIP4Cir, and FPDM's source-enhanced one


# ----------------------------------------------------------------------------------------------
# Configuration: one dataclass, flags generated from it, named presets that override defaults.
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    method: str = option("rpfm", "what to train; fpdm/rpfm train the VAE (and fusion) first, reflow "
                                 "the VAE and its RPFM teacher", choices=METHODS)
    preset: str = option("tiny", "named size: tiny (CPU), base256 / base512 (one GPU)")
    data: str = option("", "dataset root in any DeepFashion or PHOENIX layout; empty: the built-in benchmark; "
                           "'sign': the built-in signer benchmark")
    out: str = option("", "output folder for checkpoints and grids; empty: runs/<preset> (runs/<preset>-sign "
                          "with --data sign)")
    image_size: int = option(32, "square training resolution (photos are stretched, as CFLD does)")
    bench_size: str = option("64x44", "HxW of the synthesised benchmark photos")
    sign_size: str = option("128x104", "HxW of the synthesised signer benchmark's frames (--data sign)")
    unet: str = option("tiny", "UNet size (unet.PRESETS)", choices=tuple(unet_lib.PRESETS))
    vae: str = option("tiny", "VAE size (vae.VAE_PRESETS)", choices=tuple(vae_lib.VAE_PRESETS))
    fusion: str = option("tiny", "fusion encoder (fusion.FUSION_PRESETS)",
                        choices=tuple(fusion.FUSION_PRESETS))
    vae_ckpt: str = option("", "a trained VAE: our .pt, or a diffusers AutoencoderKL folder")
    fusion_pretrained: str = option("", "fusion encoder weights: an open_clip tag (openai), a local "
                                       "file, or none (random init); empty: the preset's")
    source_checkpoint: str = option("", "a local timm weight file for a ViT source encoder (DINOv2)")
    source_colours: bool | None = option(None, "also give the UNet the source in the target pose (warped or "
                                               "painted, --source-paint; poses.source_map); unset: the UNet preset's "
                                               "(on in the CPU presets tiny, tiny48 and small, off in base "
                                               "as in the papers)")
    source_paint: str = option("", "with source colours, how: warp (the source's pixels moved part by part "
                                   "into the target pose, poses.warp_source) or mean (one mean colour per "
                                   "part); empty: the UNet preset's (warp in the CPU presets)",
                               choices=("",) + unet_lib.SOURCE_PAINTS)
    fusion_ckpt: str = option("", "a trained fusion .pt; empty: <out>/fusion.pt, trained if missing")
    use_fusion: bool | None = option(None, "condition on the fusion embedding; unset: fpdm yes, rpfm no "
                                           "(--no-use-fusion: FPDM's ablations B1-B3; --use-fusion on rpfm: "
                                           "the process/fusion 2x2)")
    fusion_loss: str = option("source_enhanced", "stage-1 InfoNCE variant; both (--method fusion only): "
                                                 "train each into <out>/fusion_<loss>/ and print FPDM's "
                                                 "Table 2 for the two in one table (use "
                                                 "--fusion-steps 600: at 200 the two do not yet differ)",
                             choices=(*FUSION_LOSSES, "both"))
    steps: int = option(800, "optimiser steps of the method named by --method")
    # note: 1,000, not 500: at 500 the tiny VAE still turned teal tops blue, and every model inherits its
    # colours (the autoencoder ceiling's torso r 0.88 -> 0.92, part dE 23.6 -> 18.3; RESULTS.md, "appearance")
    vae_steps: int = option(1000, "steps of the VAE stage when it is trained on the way")
    fusion_steps: int = option(200, "steps of the fusion stage when it is trained on the way")
    batch_size: int = option(32, "images per optimiser step, summed over all processes")
    vae_batch_size: int = option(16, "images per step of the VAE stage (its convolutions run at full "
                                     "resolution, so on a CPU a larger batch costs in proportion)")
    lr: float = option(2e-3, "peak learning rate of the latent UNet (fpdm / rpfm)")
    reflow_lr: float = option(5e-4, "reflow: peak learning rate of the student, which fine-tunes the "
                                    "teacher (2e-3 made its loss jump; 5e-4 and 2e-4 scored alike)")
    vae_lr: float = option(2e-3, "peak learning rate of the VAE stage")
    fusion_lr: float = option(1e-3, "peak learning rate of the fusion stage")
    weight_decay: float = option(0.0, "AdamW weight decay (0 as in DiT and LDM)")
    warmup: int = option(100, "linear learning-rate warm-up steps")
    grad_clip: float = option(1.0, "clip the global gradient norm to this")
    ema_decay: float = option(0.999, "EMA decay of the sampled weights (warmed up, see ema_update)")
    flip: bool = option(True, "random horizontal flip with left/right joints swapped")
    heatmaps: bool = option(False, "add 18 Gaussian keypoint heatmaps to the pose map")
    drop_prob: float = option(INDEPENDENT_DROP["pose"], "per-condition drop probability, for classifier-free guidance")
    joint_drop: float = option(JOINT_DROP, "probability of dropping all conditions at once (trains the "
                                    "unconditional branch guidance starts from)")
    time_sampling: str = option("logit_normal", "rpfm: how training draws the flow time (SD3's logit-normal, "
                                                "or uniform)", choices=flow_matching.TIME_SAMPLINGS)
    offset_noise: float = option(0.1, "fpdm: offset-noise strength (FPDM uses 0.1)")
    prediction: str = option("v", "fpdm: what the UNet predicts. FPDM's eps on the GPU presets; v on "
                                  "tiny, where eps draws noise (diffusion.py says why)", choices=("eps", "v"))
    grid_steps: int = option(0, "sampling steps for the grid; 0: the process's release setting "
                                "(fpdm: DDPM 20, rpfm: Euler 10, reflow: Euler 2)")
    w_src: float | None = option(None, "guidance weight of pose + source in the grid; unset: the "
                                       "process's (2.0; reflow 1.0: its guidance is baked in)")
    w_fus: float | None = option(None, "guidance weight of the fusion embedding in the grid (fpdm; unset: "
                                       "2.0 as FPDM; equal to --w-src it is plain CFG, 2 branches)")
    teacher_steps: int = option(800, "reflow: steps of the RPFM teacher (<out>/rpfm.pt) when trained "
                                      "on the way")
    reflow_pairs: int = option(0, "reflow: training pairs turned into teacher couplings (0: all)")
    coupling_steps: int = option(flow_matching.TEACHER_STEPS, "reflow: Heun steps of the teacher's guided ODE "
                                                              "per coupling")
    log_every: int = option(100, "steps between fixed-width log lines")
    sample_every: int = option(400, "steps between PNG grids")
    ckpt_every: int = option(400, "steps between checkpoints (one is always written at the end)")
    grid_rows: int = option(6, "pairs shown in a grid")
    num_workers: int = option(1, "DataLoader worker processes")
    seed: int = option(0, "seed of the data order, initialisation and noise")
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps ...")
    threads: int = option(0, "torch CPU threads (0: torch's default, one per core). 1 can be faster on a "
                             "machine busy with other work, where idle OpenMP threads spin on a shared core")
    precision: str = option("auto", "auto: bf16 autocast on CUDA, float32 elsewhere; bf16: autocast "
                                    "on any device (CPU bf16 stands in for CUDA in tests); fp32",
                           choices=PRECISIONS)
    resume: bool = option(False, "continue --method from <out>/<method>.pt")


# Named presets: the model sizes of pipeline.MODEL_PRESETS plus the training settings of each.
# tiny is the main job, `python train.py --method rpfm` on 2 CPU cores in under 10 minutes: at
# 32 px a step is cheap enough that 800 of them give a person (at 64 px, 10 minutes gave blobs).
# Batch 32 at lr 2e-3: on a CPU a step's time is mostly per-layer overhead, so a batch of 32
# costs 1.45x a batch of 16; 800 such steps reached the test SSIM of 1,400 steps at batch 16 and
# lr 1e-3 in 25% less time (RESULTS.md, "main job"). Not so the VAE, whose full-resolution convs
# cost per image: it stays at batch 16. The dataclass defaults above are tiny's.
# The GPU presets follow the papers: FPDM's eps objective, lr 1e-4, EMA 0.9999, long runs.
_GPU = dict(prediction="eps", steps=200_000, teacher_steps=200_000, vae_steps=100_000, fusion_steps=50_000,
            lr=1e-4, reflow_lr=2.5e-5, vae_lr=1e-4, fusion_lr=1e-5, warmup=1000, num_workers=8, log_every=100,
            sample_every=5000, ckpt_every=5000, ema_decay=0.9999)
PRESETS = {
    "tiny": dict(**MODEL_PRESETS["tiny"]),
    "base256": dict(**MODEL_PRESETS["base256"], **_GPU, batch_size=32, vae_batch_size=32),
    "base512": dict(**MODEL_PRESETS["base512"], **_GPU, batch_size=16, vae_batch_size=16),
}


def parse_config(argv=None) -> TrainConfig:
    """Defaults < preset < flags given on the command line."""
    about = (__doc__.splitlines()[0] + " The defaults shown are the tiny preset's; "
             "--preset base256 / base512 changes them (see PRESETS).")
    args = cli.config_parser(TrainConfig, about, PRESETS).parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    cfg = dataclasses.replace(TrainConfig(), **PRESETS[given.get("preset", "tiny")])
    cfg = dataclasses.replace(cfg, **given)
    if not cfg.out:  # the signer benchmark's models apart from the DeepFashion ones
        cfg.out = str(Path("runs") / (cfg.preset + ("-sign" if cfg.data == "sign" else "")))
    if cfg.fusion_loss == "both" and cfg.method != "fusion":
        raise ValueError("--fusion-loss both trains and compares the two stage-1 losses: it needs "
                         "--method fusion (FPDM is trained with one of them)")
    check_unet_fits(cfg)
    return cfg


def check_unet_fits(cfg: TrainConfig):
    """A UNet preset that cannot take --image-size fails now, in one line, not after the VAE has trained
    (e.g. tiny at 48 px: its 12x12 latent does not halve three times; unet.PRESETS["tiny48"] does)."""
    if cfg.vae_ckpt:  # the latent size is the file's VAE's, known once it is loaded
        return
    latent_size = cfg.image_size // vae_lib.as_vae_config(cfg.vae).downsample_factor
    try:  # the UNetConfig validates itself, as pipeline.unet_config_for will build it
        dataclasses.replace(unet_lib.make_config(cfg.unet), image_size=cfg.image_size, latent_size=latent_size)
    except ValueError as e:
        raise ValueError(f"--unet {cfg.unet} at --image-size {cfg.image_size}: {e}") from None


def open_dataset(cfg: TrainConfig, split: str, dist: Dist) -> data.PairDataset:
    """The user's folder, or a built-in benchmark (drawn once, by rank 0)."""
    builtin = cfg.data in ("", "sign")
    if builtin and not dist.main:
        torch_dist.barrier()  # wait until rank 0 has drawn it (on first use)
    root = data.dataset_root(cfg.data, cfg.bench_size, cfg.sign_size)  # drawn once; later calls return the path
    if builtin and dist.main and dist.world > 1:
        torch_dist.barrier()  # release the other ranks
    return data.PairDataset(root, split, cfg.image_size, heatmaps=cfg.heatmaps, verbose=dist.main)


def make_batches(cfg, dataset, dist: Dist, batch_size: int, start_step: int, items=None):
    """An endless iterator of this rank's collated batches on `dist.device`, resumable at
    `start_step`; `batch_size` is the global batch. items: a dataset to draw from instead of the
    (flip-indexed) pairs, e.g. reflow's `Couplings`, whose flips are already chosen."""
    if items is None:  # the pairs: index i >= n is pair i - n mirrored, the coin tossed by EpochBatches
        items, n, flip = FlipIndexed(dataset), len(dataset), cfg.flip
    else:
        n, flip = len(items), False
    sampler = EpochBatches(n, batch_size, cfg.seed, dist.rank, dist.world, start_step, flip)
    # note: a DataLoader without its own generator draws its workers' seed from the global RNG
    # when iteration starts, which would shift a resumed run's noise by one draw.
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0,
                                         pin_memory=dist.device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    for batch in loader:
        yield {k: v.to(dist.device, non_blocking=True) if torch.is_tensor(v) else v
               for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# Stages: what trains, its loss and its grid. The loop below is the same for all of them.
# ----------------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str                 # "vae" | "fusion" | "fpdm" | "rpfm" | "reflow"
    model: nn.Module          # the network that trains
    steps: int
    batch_size: int
    lr: float
    loss: Callable            # (model, batch) -> (loss, per_sample or None, t or None)
    grid: Callable | None     # (ema model, batch) -> list of rows of (3, H, W) images in [-1, 1]
    extra: dict = field(default_factory=dict)  # frozen parts saved beside the model
    labels: tuple = ()
    items: torch.utils.data.Dataset | None = None  # what a batch holds, if not the pairs (reflow)


def vae_stage(cfg: TrainConfig) -> Stage:
    seed_everything(cfg.seed)  # the same initial weights on every rank, in every run
    model = vae_lib.VAE(cfg.vae)

    def loss(m, batch):
        total, _ = m.loss(batch["target"])
        return total, None, None

    def grid(ema, batch):
        x = batch["target"]
        recon = ema.decode(ema.encode(x)[0])
        return [[a, b] for a, b in zip(x, recon.clamp(-1, 1))]

    return Stage("vae", model, cfg.vae_steps, cfg.vae_batch_size, cfg.vae_lr, loss, grid,
                 labels=("photo", "reconstruction"))


def fusion_stage(cfg: TrainConfig) -> Stage:
    seed_everything(cfg.seed)  # the same initial weights on every rank, in every run
    fcfg = dataclasses.replace(fusion.fusion_config(cfg.fusion),
                               source_enhanced=cfg.fusion_loss == "source_enhanced")
    if cfg.fusion_pretrained:
        weights = "" if cfg.fusion_pretrained == "none" else cfg.fusion_pretrained  # "" = random
        fcfg = dataclasses.replace(fcfg, pretrained=weights)
    model = fusion.FusionModel(fcfg)

    def loss(m, batch):
        total, _ = m.loss(batch)
        return total, None, None

    return Stage("fusion", model, cfg.fusion_steps, cfg.batch_size, cfg.fusion_lr, loss,
                 grid=None)


def latent_stage(cfg: TrainConfig, vae: nn.Module, fusion_model, pose_channels: int) -> Stage:
    """FPDM and RPFM: the same UNet and conditions, trained by a different process."""
    seed_everything(cfg.seed)  # the same initial weights on every rank, in every run
    # sizes follow the data and the frozen stages; fusion_dim 0: RPFM has no fusion input at all
    ucfg = unet_config_for(cfg.unet, cfg.image_size, vae, fusion_model, pose_channels, cfg.source_checkpoint,
                           cfg.source_colours, cfg.source_paint)
    model = unet_lib.UNet(ucfg)
    process = make_process(cfg.method, dataclasses.asdict(cfg))

    def loss(m, batch):
        with torch.no_grad():
            # float32 even under autocast: the processes need exact noise levels (diffusion.py)
            x = vae.encode_latents(batch["target"]).float()  # (B, 4, h, w), unit variance
        cond = build_cond(m, fusion_model, batch["source"], batch["target_pose"],
                          keypoints=hide_source_pose(batch_keypoints(batch)))
        return process.loss(m, x, cond)

    extra = {"vae": component(vae)}
    if fusion_model is not None:
        extra["fusion"] = component(fusion_model)
    return Stage(cfg.method, model, cfg.steps, cfg.batch_size, cfg.lr, loss,
                 latent_grid(process, vae, fusion_model, cfg), extra, labels=LATENT_GRID_LABELS)


LATENT_GRID_LABELS = ("source", "target pose", "generated", "target")


def latent_grid(process, vae, fusion_model, cfg: TrainConfig) -> Callable:
    """The grid of FPDM, RPFM and the reflow student: source | target pose | generated | target, drawn
    by the EMA model at the process's release setting (or --grid-steps / --w-src / --w-fus)."""
    @torch.no_grad()
    def grid(ema, batch):
        cond = build_cond(ema, fusion_model, batch["source"], batch["target_pose"], keypoints=batch_keypoints(batch))
        b, c, h = batch["target"].shape[0], ema.config.latent_channels, ema.config.latent_size
        noise = torch.randn(b, c, h, h, device=batch["target"].device)  # (B, 4, h, w)
        z = sample_latents(process, ema, noise, cond, cfg.grid_steps, cfg.w_src, cfg.w_fus)
        fake = vae.decode_latents(z).clamp(-1, 1)  # (B, 3, H, W)
        pose = batch["target_pose"][:, :3] * 2 - 1  # pose map drawn in the same [-1, 1] range
        return [list(r) for r in zip(batch["source"], pose, fake, batch["target"])]
    return grid


# ----------------------------------------------------------------------------------------------
# Reflow: RPFM's teacher turns noise into couplings (couplings.py), a student learns the straight lines
# ----------------------------------------------------------------------------------------------

def get_teacher(cfg: TrainConfig, dist: Dist, dataset, vae) -> tuple[nn.Module, dict]:
    """RPFM's EMA UNet from <out>/rpfm.pt (trained first, --teacher-steps steps, if missing) and its file."""
    teacher_cfg = dataclasses.replace(cfg, method="rpfm", steps=cfg.teacher_steps, use_fusion=False)
    teacher = run_stage(latent_stage(teacher_cfg, vae, None, dataset.pose_channels), teacher_cfg, dist, dataset,
                        resume=False)
    return frozen(teacher, dist.device), load_checkpoint(Path(cfg.out) / "rpfm.pt", "rpfm")


def reflow_stage(cfg: TrainConfig, vae, teacher: nn.Module, teacher_ckpt: dict, items: couplings.Couplings) -> Stage:
    """The student: the teacher's UNet and weights, trained on the straight lines of the couplings."""
    model = unet_lib.UNet(teacher.config)
    model.load_state_dict(teacher_ckpt["ema"])  # it starts drawing as the teacher does
    process = make_process("reflow", dataclasses.asdict(cfg))

    def loss(m, batch):
        cond = build_cond(m, None, batch["source"], batch["target_pose"], keypoints=batch_keypoints(batch))  # all kept
        return process.loss(m, batch["x1"], cond, noise=batch["noise"])

    extra = {"vae": component(vae), "teacher": {"checkpoint": str(Path(cfg.out) / "rpfm.pt"),
                                                "step": teacher_ckpt["step"]}}
    return Stage("reflow", model, cfg.steps, cfg.batch_size, cfg.reflow_lr, loss,
                 latent_grid(process, vae, None, cfg), extra, labels=LATENT_GRID_LABELS, items=items)


def run_reflow(cfg: TrainConfig, dist: Dist, dataset, vae) -> nn.Module:
    """--method reflow: the teacher (trained on the way if missing), its couplings, then the student."""
    teacher, teacher_ckpt = get_teacher(cfg, dist, dataset, vae)
    wanted = couplings.plan(dataset, teacher_ckpt, cfg.seed, cfg.reflow_pairs, cfg.flip, cfg.coupling_steps)
    state = couplings.get_couplings(Path(cfg.out) / "reflow_couplings.pt", wanted, dist, dataset, teacher)
    stage = reflow_stage(cfg, vae, teacher, teacher_ckpt, couplings.Couplings(FlipIndexed(dataset), state))
    return run_stage(stage, cfg, dist, dataset, resume=cfg.resume)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

class StepModule(nn.Module):
    """A stage's whole loss as one forward pass.

    note: DistributedDataParallel synchronises the gradients of what runs inside its forward.
    Putting the loss there (VAE encode, source tokens, the process, the UNet) keeps every
    trained parameter inside; calling `model.loss(...)` on a DDP wrapper would bypass it.
    """

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict):
        return self.loss_fn(self.model, batch)


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up then constant, as DiT and most latent diffusion code do."""
    return peak * min(1.0, (step + 1) / max(1, warmup))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int):
    """ema <- d * ema + (1 - d) * model, with d warmed up as (1 + n) / (10 + n).

    note: the warm-up matters for short CPU runs: with d = 0.999 from step 0 the EMA of a
    1,000-step run would still be mostly the random initialisation.
    """
    d = min(decay, (1 + step) / (10 + step))
    # one foreach call instead of a Python loop over every tensor (a few ms a step on a CPU)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class LossByT:
    """Mean loss in 5 buckets of the process's time: where along the path the model struggles.

    note: each process's own time, which runs opposite ways: FPDM's t / (T - 1) is 0 at the least
    noisy step, RPFM's flow time is 0 at pure noise. The line says which (`convention`).
    """
    CONVENTIONS = {"fpdm": "t=0 least noisy", "rpfm": "t=0 noise", "reflow": "t=0 noise"}

    def __init__(self, buckets: int = 5, method: str = ""):
        self.convention = self.CONVENTIONS.get(method, "")
        self.sum = torch.zeros(buckets)
        self.count = torch.zeros(buckets)

    def add(self, per_sample, t):
        if per_sample is None:
            return
        k = (t.detach().float().cpu() * len(self.sum)).long().clamp(0, len(self.sum) - 1)  # (B,)
        self.sum.index_add_(0, k, per_sample.detach().float().cpu())
        self.count.index_add_(0, k, torch.ones_like(k, dtype=torch.float))

    def line(self) -> str:
        means = self.sum / self.count.clamp(min=1)
        edges = torch.linspace(0, 1, len(self.sum) + 1)
        cells = [f"t[{a:.1f},{b:.1f}) " + (f"{m:.4f}" if n else "   -  ")
                 for a, b, m, n in zip(edges, edges[1:], means, self.count)]
        self.sum.zero_(), self.count.zero_()
        return f"loss by t ({self.convention}) | " + " | ".join(cells)


def train(stage: Stage, cfg: TrainConfig, dist: Dist, dataset, ckpt_path: Path, resume: bool):
    """Train `stage.model` for `stage.steps` steps and leave `ckpt_path`; returns the EMA model."""
    model, device = stage.model.to(dist.device), dist.device
    net = StepModule(model, stage.loss)
    net = DistributedDataParallel(net) if dist.world > 1 else net  # broadcasts rank 0's weights
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # note: after the broadcast
    # note: fused=True runs the whole AdamW update as one kernel; the default for-loop over ~500
    # tensors cost 40 ms of a 200 ms CPU step of the tiny UNet (profiled), the fused one 7 ms
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=stage.lr,
                            weight_decay=cfg.weight_decay, fused=True)
    start = restore(ckpt_path, stage, model, ema, opt, dist) if resume else 0
    if start == 0:
        seed_everything(cfg.seed + dist.rank)  # each rank draws its own noise and dropping
    batches = make_batches(cfg, dataset, dist, stage.batch_size, start, stage.items)
    autocast = autocast_for(cfg.precision, device)
    log, by_t = StepLog(stage, start, dist), LossByT(method=stage.name)
    save = lambda step: save_stage(ckpt_path, stage, cfg, model, ema, opt, step, dist)  # noqa
    done = start  # steps whose update is complete
    try:
        for step in range(start, stage.steps):
            batch = next(batches)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, stage.lr, cfg.warmup)
            with autocast:
                loss, per_sample, t = net(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema_update(ema, model, cfg.ema_decay, step)
            done = step + 1
            by_t.add(per_sample, t)
            log.step(step, loss, grad_norm, opt.param_groups[0]["lr"], by_t, cfg.log_every)
            if stage.grid and dist.main and due(done, cfg.sample_every, stage.steps):
                write_grid(stage, ema, batch, ckpt_path.parent / f"{stage.name}_{done:07d}.png", cfg)
            if due(done, cfg.ckpt_every, stage.steps):
                save(done)
    except KeyboardInterrupt:
        save(done)  # nothing lost: the steps done so far are on disk, --resume continues
        log.close()
        raise
    log.close()
    return ema


def due(done: int, every: int, total: int) -> bool:
    """Every `every` steps, and always after the last one."""
    return done % every == 0 or done == total


def restore(path: Path, stage: Stage, model, ema, opt, dist: Dist) -> int:
    """Load everything a resumed run needs; returns the step to continue from."""
    if not path.is_file():
        if dist.main:
            print(f"[{stage.name}] no checkpoint at {path}: starting from step 0")
        return 0
    ckpt = load_checkpoint(path, stage.name)
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    rng = ckpt["rng"][dist.rank % len(ckpt["rng"])]  # this rank's own stream
    torch.set_rng_state(rng["torch"])  # the same noise as an uninterrupted run
    random.setstate(rng["python"])
    if dist.device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], dist.device)
    if dist.main:
        print(f"[{stage.name}] resumed {path} at step {ckpt['step']}")
    return ckpt["step"]


def save_stage(path, stage, cfg, model, ema, opt, step, dist: Dist):
    rng = rng_states(dist)  # a collective: every rank takes part before rank 0 writes
    if not dist.main:
        return  # only rank 0 writes; DDP keeps every rank's weights identical
    save_checkpoint(path, {
        "method": stage.name, "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "config": {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model.config)},
        "rng": rng,
        **stage.extra,
    })


@torch.no_grad()
def write_grid(stage: Stage, ema, batch, path: Path, cfg: TrainConfig):
    """A PNG of the EMA model's work, drawn with fixed noise.

    note: fork_rng restores the training RNG afterwards, so writing a grid (or not) never
    changes the noise the following steps see: a resumed run stays step-for-step identical.
    """
    n = min(cfg.grid_rows, batch["target"].shape[0])
    cuda = [batch["target"].device] if batch["target"].is_cuda else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        rows = stage.grid(ema, {k: v[:n] for k, v in batch.items()})
    data.save_grid([[enlarge(img) for img in row] for row in rows], path, labels=stage.labels)


class StepLog:
    """tqdm bar (loss, lr, images/s) plus a fixed-width line every N steps, on rank 0 only."""

    def __init__(self, stage: Stage, start: int, dist: Dist):
        self.stage, self.main = stage, dist.main
        self.bar = cli.progress(total=stage.steps, initial=start, desc=f"[{stage.name}]",
                                 disable=not self.main, dynamic_ncols=True)
        self.t0, self.images = time.time(), 0

    def step(self, step, loss, grad_norm, lr, by_t: LossByT, every: int):
        self.images += self.stage.batch_size
        self.bar.update(1)
        if not self.main or not due(step + 1, every, self.stage.steps):
            return
        dt = time.time() - self.t0
        ips = self.images / max(dt, 1e-9)
        loss, grad_norm = loss.item(), float(grad_norm)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.1e}", img_s=f"{ips:.1f}")
        self.bar.write(f"[{self.stage.name}] step {step + 1:7d} | loss {loss:9.5f} | "
                       f"grad {grad_norm:8.3f} | lr {lr:.2e} | {1000 * dt / every:7.1f} ms/step | "
                       f"{ips:7.1f} img/s")
        if by_t.count.sum() > 0:
            self.bar.write(f"[{self.stage.name}] {by_t.line()}")
        self.t0, self.images = time.time(), 0

    def close(self):
        self.bar.close()


# ----------------------------------------------------------------------------------------------
# Stages chain themselves: a later method trains (or reuses) what it depends on
# ----------------------------------------------------------------------------------------------

def run_stage(stage: Stage, cfg, dist, dataset, resume: bool) -> nn.Module:
    """Train a stage, or reuse its finished checkpoint; returns its (EMA) model."""
    path = Path(cfg.out) / f"{stage.name}.pt"
    if path.is_file() and not resume:
        done = load_checkpoint(path, stage.name)
        if done["step"] >= stage.steps:
            if dist.main:
                print(f"[{stage.name}] reusing {path} (step {done['step']})")
            stage.model.load_state_dict(done["ema"])
            return stage.model
        resume = True  # an unfinished earlier stage (a crash, Ctrl-C): continue it
    if dist.main:
        n = sum(p.numel() for p in stage.model.parameters()) / 1e6
        print(f"[{stage.name}] training {n:.2f} M parameters for {stage.steps} steps -> {path}")
    return train(stage, cfg, dist, dataset, path, resume)


def measure_scaling(vae: nn.Module, dataset, cfg, dist: Dist) -> nn.Module:
    """Set the VAE's scaling_factor to 1/std of its latents on training images (see vae.py).

    note: deterministic (the first 256 training targets, in order), so every run that reuses
    a VAE measures the same factor.
    """
    if float(vae.scaling_factor) != 1.0:
        return vae  # 1.0 means "not measured yet"; SD's VAE comes with its 0.18215
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False)
    batches = [b["target"].to(dist.device) for b, _ in zip(loader, range(8))]
    with torch.no_grad():
        vae.measure_scaling_factor(torch.cat([vae.encode(x)[0] for x in batches]))
    if dist.main:
        print(f"[vae] scaling_factor = {float(vae.scaling_factor):.4f} (1 / std of the latents)")
    return vae


def get_vae(cfg, dist, dataset) -> nn.Module:
    """The frozen VAE, its scaling factor measured (it is then saved inside fpdm/rpfm files)."""
    if cfg.vae_ckpt:
        vae = load_vae(cfg.vae_ckpt)
    else:
        vae = run_stage(vae_stage(cfg), cfg, dist, dataset,
                        resume=cfg.resume and cfg.method == "vae")
    return frozen(measure_scaling(vae.to(dist.device), dataset, cfg, dist), dist.device)


def wants_fusion(cfg) -> bool:
    """The fusion stage itself; FPDM unless --no-use-fusion; RPFM only with --use-fusion (a 2x2 ablation)."""
    if cfg.method in ("vae", "fusion"):
        return cfg.method == "fusion"
    return cfg.method == "fpdm" if cfg.use_fusion is None else cfg.use_fusion


def get_fusion(cfg, dist, dataset):
    if not wants_fusion(cfg):
        return None
    if cfg.fusion_ckpt:
        return frozen(load_fusion(cfg.fusion_ckpt), dist.device)
    model = run_stage(fusion_stage(cfg), cfg, dist, dataset,
                      resume=cfg.resume and cfg.method == "fusion")
    return frozen(model, dist.device)


def run(cfg: TrainConfig):
    dist = setup_distributed(cfg.device)
    if dist.device.type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dataset = open_dataset(cfg, "train", dist)
    if dist.main:
        print(f"[data] {dataset.root} ({dataset.layout} layout): {len(dataset)} training pairs, "
              f"{cfg.image_size}x{cfg.image_size}, device {dist.device}, {dist.world} process(es)")
    if cfg.method == "vae":
        model = get_vae(cfg, dist, dataset)
    elif cfg.method == "fusion":
        model = train_fusion_losses(cfg, dist, dataset)
    elif cfg.method == "reflow":
        model = run_reflow(cfg, dist, dataset, get_vae(cfg, dist, dataset))
    else:
        vae = get_vae(cfg, dist, dataset)
        fusion_model = get_fusion(cfg, dist, dataset)
        stage = latent_stage(cfg, vae, fusion_model, dataset.pose_channels)
        if dist.main:
            print(f"[{cfg.method}] source encoder: {stage.model.source_encoder.describe()}")
        model = run_stage(stage, cfg, dist, dataset, resume=cfg.resume)
    if dist.world > 1:
        check_ranks_agree(model, dist)
        torch_dist.destroy_process_group()
    return model


def train_fusion_losses(cfg, dist, dataset):
    """--method fusion: train the stage-1 model (each loss of --fusion-loss both, in <out>/fusion_<loss>/),
    then print FPDM's Table 2 on the test split: retrieval by the source alone and by the fused
    embedding, for every loss trained, in one table. Returns the (last) fusion model."""
    losses = FUSION_LOSSES if cfg.fusion_loss == "both" else (cfg.fusion_loss,)
    rows, model = {}, None
    for loss in losses:
        out = str(Path(cfg.out) / f"fusion_{loss}") if len(losses) > 1 else cfg.out
        sub = dataclasses.replace(cfg, fusion_loss=loss, out=out)
        model = get_fusion(sub, dist, dataset)
        if dist.main:
            rows.update({f"{loss} InfoNCE: {row}": metrics for row, metrics in retrieval(model, sub).items()})
    if dist.main:
        print(f"[fusion] retrieval of the true target among the test targets ({', '.join(losses)}):")
        print_table(rows, RETRIEVAL_COLUMNS, footer=RETRIEVAL_FOOTER)
    return model


def retrieval(model, cfg) -> dict:
    """{"source alone": R@k..., "fused": R@k...} of a fusion model on the test split."""
    test = open_dataset(cfg, "test", Dist(device=next(model.parameters()).device))
    loader = torch.utils.data.DataLoader(test, batch_size=64, shuffle=False)
    return fusion.evaluate_retrieval(model, loader)


def main(argv=None):
    try:
        run(parse_config(argv))
    except (ValueError, FileNotFoundError, data.DataError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the last checkpoint is on disk; rerun with --resume to continue")


if __name__ == "__main__":
    main()
