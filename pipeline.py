"""From a trained checkpoint to generated latents and images: the one path both scripts walk.

A checkpoint of train.py is one dict, written atomically, that carries everything needed to
draw: the UNet (its EMA weights too), the frozen VAE and, for FPDM, the frozen fusion model, and
the training settings that choose the process. This file reads and writes that format, rebuilds
the process (FPDM's diffusion, RPFM's flow matching, or the flow of RPFM's reflow student), builds
the conditions and draws latents:

    checkpoint -> Generator(process, unet, vae, fusion) -> build_cond -> sample_latents -> decode

`generate` walks that path for one batch with honest timing (PhaseTimer: source encoding, sampling
loop, VAE decoding, CUDA synchronised before every clock read; CountingModel counts the network
evaluations per image), so sample.py, the sweep and the live demo time exactly the same thing.

It also names the model sizes (MODEL_PRESETS: image size, UNet, VAE, fusion encoder), so the
speed benchmark builds the same models train.py trains without opening train.py, and it records
what sample.py wrote (samples.json) so evaluate.py can find the newest folder and its pairs.
It is a library file: it imports only library files (data, vae, unet, fusion, diffusion,
flow_matching), never the scripts train.py / sample.py / evaluate.py.

Papers: FPDM (Lee et al., arXiv 2412.07333), RPFM (Jeong et al., arXiv 2505.03562), latent
diffusion (Rombach et al., arXiv 2112.10752), DiT's EMA sampling (Peebles & Xie, arXiv 2212.09748).

Run: used by `python sample.py`, `python evaluate.py`, `python demo.py`.
Test: python -m pytest -q tests/test_pipeline.py

Shape letters: B batch, H W image size, h w latent size, N source tokens, D embedding width.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image

import data
import diffusion
import flow_matching
import fusion
import poses
import unet as unet_lib
import vae as vae_lib
from guidance import INDEPENDENT_DROP, JOINT_DROP

CKPT_VERSION = 1
LATENT_METHODS = ("fpdm", "rpfm", "reflow")  # the methods whose checkpoints can draw a person
PRECISIONS = ("auto", "bf16", "fp32")
SAMPLE_RECORD = "samples.json"  # sample.py's note of what it wrote, inside its output folder

# Model sizes by name (train.py's presets add optimiser settings on top). tiny: the CPU job, 32 px
# images (8x8x8 latents) because on a CPU the number of steps buys quality; the GPU presets use the
# papers' sizes: 256x176 photos trained at 256x256 (CFLD, FPDM), 512x352 at 512x512 (PCDM), and
# Stable Diffusion's VAE shape (downsample 8).
MODEL_PRESETS = {
    "tiny": dict(image_size=32, bench_size="64x44", sign_size="128x104", unet="tiny", vae="tiny", fusion="tiny"),
    "base256": dict(image_size=256, bench_size="256x176", sign_size="260x210", unet="base", vae="sd",
                    fusion="vit_l14"),
    "base512": dict(image_size=512, bench_size="512x352", sign_size="520x420", unet="base", vae="sd",
                    fusion="vit_l14"),
}

# The training settings that shape the process, for checkpoints written before a setting existed:
# old files lack joint_drop and prediction, and were trained with a joint drop of 0.1 and eps (the
# paper's objective; train.py's default on the tiny preset is now "v", diffusion.py says why).
PROCESS_SETTINGS = dict(drop_prob=INDEPENDENT_DROP["pose"], joint_drop=JOINT_DROP, offset_noise=0.1,
                        prediction="eps", time_sampling="logit_normal")


# ----------------------------------------------------------------------------------------------
# The checkpoint file: one dict, written atomically, loaded with one clear error when wrong
# ----------------------------------------------------------------------------------------------

def save_checkpoint(path, payload: dict):
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"version": CKPT_VERSION, **payload}, tmp)
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path, method: str | tuple | None = None) -> dict:
    """Load our checkpoint dict; one clear error for a missing, corrupt or wrong-method file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, a text file ...
        raise ValueError(f"checkpoint {path} is corrupt or not a torch file "
                         f"({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "version" not in ckpt or "method" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a checkpoint of this project's train.py")
    wanted = (method,) if isinstance(method, str) else method
    if wanted and ckpt["method"] not in wanted:
        raise ValueError(f"checkpoint {path} holds a {ckpt['method']!r} model, "
                         f"expected {' or '.join(wanted)}")
    return ckpt


def train_settings(ckpt: dict) -> dict:
    """The training settings stored in a checkpoint ({} if none): read with .get, so old keys
    (bf16) are ignored and new ones fall back to their defaults."""
    return dict(ckpt.get("config", {}).get("train", {}))


def is_finished(ckpt: dict) -> bool:
    """A run is finished when its step reached its configured steps (no setting: trust it)."""
    return ckpt["step"] >= train_settings(ckpt).get("steps", ckpt["step"])


def newest_checkpoint(folder) -> Path | None:
    """The newest (by modification time) finished fpdm.pt / rpfm.pt / reflow.pt in train.py's --out folder.

    None when there is none at all; a ValueError naming them when all of them are unfinished.
    """
    paths = [Path(folder) / f"{m}.pt" for m in LATENT_METHODS]
    paths = sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
    unfinished = []
    for path in paths:
        ckpt = load_checkpoint(path, LATENT_METHODS)
        if is_finished(ckpt):
            return path
        unfinished.append(f"{path} (step {ckpt['step']} of {train_settings(ckpt)['steps']})")
    if unfinished:
        raise ValueError(f"only unfinished checkpoints: {', '.join(unfinished)}; finish one with "
                         f"`python train.py --method METHOD --resume`, or pass --ckpt PATH")
    return None


# ----------------------------------------------------------------------------------------------
# Frozen parts: the VAE and the fusion model, alone or inside a later checkpoint
# ----------------------------------------------------------------------------------------------

def load_vae(path: str) -> vae_lib.VAE:
    """Our VAE checkpoint (EMA weights), or a diffusers AutoencoderKL folder."""
    if Path(path).is_dir():
        return vae_lib.load_diffusers_vae(path)
    ckpt = load_checkpoint(path, "vae")
    model = vae_lib.VAE(ckpt["config"]["model"])
    model.load_state_dict(ckpt["ema"])
    return model


def load_fusion(path: str) -> fusion.FusionModel:
    ckpt = load_checkpoint(path, "fusion")
    model = fusion.FusionModel(ckpt["config"]["model"], load_pretrained=False)  # weights: below
    model.load_state_dict(ckpt["ema"])
    return model


def frozen(model: nn.Module, device) -> nn.Module:
    """A network used as a fixed function by a later stage: eval mode, no gradients."""
    model.to(device).eval().requires_grad_(False)
    return model


def component(model: nn.Module) -> dict:
    """A frozen network saved inside a later checkpoint, so that file alone can sample."""
    return {"config": dataclasses.asdict(model.config), "state": model.state_dict()}


def unet_config_for(unet_preset, image_size: int, vae: nn.Module, fusion_model, pose_channels: int,
                    source_checkpoint: str = "", source_colours: bool | None = None,
                    source_paint: str = "") -> unet_lib.UNetConfig:
    """The UNet preset sized to the data and the frozen stages it sits between.

    note: fusion_dim 0 when there is no fusion model: RPFM's UNet has no fusion input at all.
    source_colours: None keeps the preset's choice; source_paint: "" keeps it.
    """
    ucfg = dataclasses.replace(unet_lib.make_config(unet_preset), image_size=image_size,
                               pose_channels=pose_channels,
                               latent_size=image_size // vae.downsample_factor,
                               latent_channels=vae.latent_channels,
                               fusion_dim=fusion_model.embed_dim if fusion_model else 0)
    if source_checkpoint:
        ucfg = dataclasses.replace(ucfg, source_checkpoint=source_checkpoint)
    if source_colours is not None:
        ucfg = dataclasses.replace(ucfg, source_colours=source_colours)
    if source_paint:
        ucfg = dataclasses.replace(ucfg, source_paint=source_paint)
    return ucfg


# ----------------------------------------------------------------------------------------------
# Devices and precision
# ----------------------------------------------------------------------------------------------

def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is the GPU when there is one; a named device must exist (one clear line if not)."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible to torch")
    return device


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on CUDA by default; on the CPU only when asked (tests use it as CUDA's stand-in)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, torch.bfloat16, enabled=enabled)


# ----------------------------------------------------------------------------------------------
# The process and how it samples
# ----------------------------------------------------------------------------------------------

def make_process(method: str, settings: dict):
    """FPDM's diffusion or RPFM's flow matching: where the process is chosen. The other differences
    (FPDM's fusion stage and input, its prediction target and offset noise) are in the README's table.

    settings: train.py's settings as a dict (a checkpoint's config["train"] or asdict(TrainConfig));
    unknown keys are ignored, missing ones take PROCESS_SETTINGS' defaults.
    """
    s = {k: settings.get(k, default) for k, default in PROCESS_SETTINGS.items()}
    drops = {"pose": s["drop_prob"], "src_tokens": s["drop_prob"], "fusion": s["drop_prob"]}
    if method == "fpdm":
        return diffusion.Diffusion(offset_noise=s["offset_noise"], drop_probs=drops,
                                   joint_drop=s["joint_drop"], prediction=s["prediction"])
    if method == "reflow":  # RPFM's few-step student: straight lines between teacher couplings
        return flow_matching.Reflow()
    return flow_matching.FlowMatching(drop_probs=drops, joint_drop=s["joint_drop"], time_sampling=s["time_sampling"])


@dataclass(frozen=True)
class Sampling:
    """How to draw: steps, the sampler (diffusion: ddpm / ddim) or ODE solver (flow matching:
    euler / midpoint / heun), and the two guidance weights."""
    steps: int
    sampler: str
    w_src: float
    w_fus: float


def sampling_for(process, steps: int = 0, sampler: str = "", w_src=None, w_fus=None) -> Sampling:
    """The process's release setting (`process.release`; FPDM: DDPM 20, w 2; RPFM: Euler 10, w 2;
    the reflow student: Euler 2, w 1) where an argument is 0 / "" / None; a sampler the process
    does not have is a ValueError."""
    release = process.release
    sampler = sampler or release["sampler"]
    if sampler not in process.samplers:
        kind = "diffusion sampler" if isinstance(process, diffusion.Diffusion) else "flow-matching solver"
        raise ValueError(f"{sampler!r} is not a {kind}; expected one of {', '.join(process.samplers)}")
    return Sampling(steps or release["steps"], sampler, release["w_src"] if w_src is None else w_src,
                    release["w_fus"] if w_fus is None else w_fus)


def sample_latents(process, model, noise, cond, steps: int = 0, w_src=None, w_fus=None, sampler: str = ""):
    """Draw latents (B, C, h, w) from noise with either process; 0 / None / "": its default."""
    s = sampling_for(process, steps, sampler, w_src, w_fus)
    name = "sampler" if isinstance(process, diffusion.Diffusion) else "solver"
    return process.sample(model, noise, cond, s.steps, w_src=s.w_src, w_fus=s.w_fus, **{name: s.sampler})


def build_cond(model: unet_lib.UNet, fusion_model, source, pose, tokens=None, keypoints=None,
               part_colours=None) -> dict:
    """The conditions of both methods: pose map, source tokens, and (FPDM) the fusion embedding.

    keypoints: (source_keypoints, target_keypoints), each (B, K, 2) in the S x S frame; needed when
    the UNet takes the pose painted in the source's colours (UNetConfig.source_colours, the CPU
    presets), which is appended to the pose map here.

    note: the tokens are computed outside the UNet's forward so streaming can encode a source
    once (pass them as `tokens`; likewise its `part_colours`, poses.source_part_colours); the
    process drops them (zeros) per sample exactly as it does at guidance time. The painted colours
    travel inside `pose` and are dropped with it.
    """
    tokens = model.encode_source(source) if tokens is None else tokens  # (B, N, D)
    cond = {"pose": pose, "src_tokens": tokens}
    if fusion_model is not None:
        with torch.no_grad():
            cond["fusion"] = fusion_model.embed(source, pose)  # (B, D), fixed: stage 1 is frozen
    if model.config.source_colours:
        if keypoints is None:
            raise ValueError("this UNet takes the pose painted in the source's colours (source_colours): "
                             "pass keypoints=(source_keypoints, target_keypoints)")
        painted = poses.source_map(model.config.source_paint, source, *(k.to(source.device) for k in keypoints),
                                   part_colours=part_colours)  # (B, 4, S, S)
        cond["pose"] = torch.cat([pose, painted.to(pose.dtype)], dim=1)  # (B, P + 4, S, S)
    return cond


SOURCE_POSE_DROP = 0.1  # training: the share of samples whose source pose is hidden (nothing painted)


def hide_source_pose(keypoints: tuple, p: float = SOURCE_POSE_DROP) -> tuple:
    """Training: mark every source joint missing for a random share p of the batch.

    note: a photo uploaded to the demo or streamed from a file has no pose (no keypoint detector in
    the stack), so nothing is painted for it; hiding the pose now and then trains that case, where
    the look must come from the source tokens alone."""
    source, target = keypoints
    hide = torch.rand(source.shape[0], device=source.device) < p  # (B,)
    return torch.where(hide[:, None, None], torch.full_like(source, poses.MISSING), source), target


def batch_keypoints(batch: dict, device=None) -> tuple:
    """(source_keypoints, target_keypoints) of a PairDataset batch, for build_cond / generate."""
    pair = batch["source_keypoints"], batch["target_keypoints"]
    return pair if device is None else tuple(k.to(device) for k in pair)


# ----------------------------------------------------------------------------------------------
# A generator: everything one method needs to draw
# ----------------------------------------------------------------------------------------------

@dataclass
class Generator:
    """Process, UNet, VAE and optional fusion model of one method, frozen on one device."""
    method: str
    process: object
    unet: nn.Module
    vae: nn.Module
    fusion: nn.Module | None
    data_root: str = ""         # the dataset it was trained on ("" = the built-in benchmark, "sign" the signers)
    bench_size: str = "64x44"   # that benchmark's photo size
    sign_size: str = "128x104"  # the signer benchmark's frame size
    checkpoint: str = ""        # the file it came from ("" = random weights)
    step: int = 0               # the optimiser steps behind its weights (0 = random weights)

    @property
    def image_size(self) -> int:
        return self.unet.config.image_size

    def dataset_root(self) -> str:
        """The dataset it was trained on: its folder, or a built-in benchmark (drawn on first use)."""
        return str(data.dataset_root(self.data_root, self.bench_size, self.sign_size))

    def noise(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        c, h = self.unet.config.latent_channels, self.unet.config.latent_size
        return torch.randn(batch, c, h, h, device=device, generator=generator)  # (B, 4, h, w)

    @classmethod
    def from_checkpoint(cls, path, use_ema: bool = True, device="cpu", method=LATENT_METHODS) -> "Generator":
        """A trained fpdm / rpfm / reflow file (`method`: the one(s) expected, else a ValueError); its
        EMA weights by default (as DiT samples)."""
        ckpt = load_checkpoint(path, method)
        settings = train_settings(ckpt)
        model = unet_lib.UNet(ckpt["config"]["model"])
        model.load_state_dict(ckpt["ema" if use_ema else "model"])
        vae = vae_lib.VAE(ckpt["vae"]["config"])
        vae.load_state_dict(ckpt["vae"]["state"])
        fus = None
        if "fusion" in ckpt:
            fus = fusion.FusionModel(ckpt["fusion"]["config"], load_pretrained=False)
            fus.load_state_dict(ckpt["fusion"]["state"])
        return cls(ckpt["method"], make_process(ckpt["method"], settings),
                   *(frozen(m, device) if m is not None else None for m in (model, vae, fus)),
                   data_root=settings.get("data", ""), bench_size=settings.get("bench_size", "64x44"),
                   sign_size=settings.get("sign_size", "128x104"),
                   checkpoint=str(path), step=ckpt["step"])

    @classmethod
    def random_init(cls, method: str, preset: str, device="cpu", pose_channels: int = 3) -> "Generator":
        """Randomly initialised models of a named size: speed does not depend on the weights.

        note: never pretrained weights here (nothing to download, and nothing a timing needs).
        """
        if preset not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choices: {', '.join(MODEL_PRESETS)}")
        sizes = MODEL_PRESETS[preset]
        vae = vae_lib.VAE(sizes["vae"])
        fcfg = dataclasses.replace(fusion.fusion_config(sizes["fusion"]), pretrained="")
        fus = fusion.FusionModel(fcfg, load_pretrained=False) if method == "fpdm" else None
        ucfg = unet_config_for(sizes["unet"], sizes["image_size"], vae, fus, pose_channels)
        model = unet_lib.UNet(dataclasses.replace(ucfg, source_pretrained=False))
        return cls(method, make_process(method, PROCESS_SETTINGS),
                   *(frozen(m, device) if m is not None else None for m in (model, vae, fus)),
                   bench_size=sizes["bench_size"], sign_size=sizes["sign_size"])


def enlarge(img: torch.Tensor, at_least: int = 128) -> torch.Tensor:
    """Nearest-neighbour upscaling of small CPU-preset images, so a person can see the grid."""
    k = max(1, at_least // img.shape[-1])
    return img.float().cpu().repeat_interleave(k, -1).repeat_interleave(k, -2)  # (3, kH, kW)


# ----------------------------------------------------------------------------------------------
# The record of a sample folder: what sample.py wrote, so evaluate.py scores exactly those pairs
# ----------------------------------------------------------------------------------------------

def write_sample_record(folder, record: dict) -> Path:
    """samples.json inside the folder, written last: its presence marks a finished folder."""
    path = Path(folder) / SAMPLE_RECORD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def newest_sample_record(runs) -> tuple[Path, dict] | None:
    """(folder, record) of the newest finished sample folder under <runs>/samples/, or None."""
    records = sorted(Path(runs, "samples").glob(f"*/{SAMPLE_RECORD}"), key=lambda p: p.stat().st_mtime)
    if not records:
        return None
    try:
        return records[-1].parent, json.loads(records[-1].read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{records[-1]} is not valid JSON; rerun `python sample.py`") from None


# ----------------------------------------------------------------------------------------------
# Generating, timed: what sample.py, the sweep and the demo all run
# ----------------------------------------------------------------------------------------------

class CountingModel(nn.Module):
    """Counts UNet evaluations per image: a batched 2-branch call on B images counts 2."""

    def __init__(self, model: nn.Module, batch: int):
        super().__init__()
        self.model, self.batch, self.rows = model, batch, 0

    def forward(self, x_t, t, **cond):
        self.rows += x_t.shape[0]
        return self.model(x_t, t, **cond)

    @property
    def nfe(self) -> float:
        return self.rows / self.batch


class PhaseTimer:
    """Wall-clock seconds per phase; CUDA is synchronised so queued kernels are counted."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    @contextmanager
    def __call__(self, phase: str):
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()  # like no_grad, and skips autograd's version counting: ~5% at batch 1 on a CPU
def generate(gen: Generator, source, pose, sampling: Sampling, timer: PhaseTimer, precision: str,
             tokens=None, noise=None, keypoints=None):
    """source (B, 3, H, W), pose (B, P, H, W) -> images (B, 3, H, W) in [-1, 1] and the counted NFE.
    tokens: the source already encoded (streaming); noise (B, C, h, w): None draws it here;
    keypoints: (source, target) (B, K, 2) each, see build_cond."""
    counter = CountingModel(gen.unet, source.shape[0])
    with autocast_for(precision, source.device):
        with timer("source encoding"):
            cond = build_cond(gen.unet, gen.fusion, source, pose, tokens, keypoints)
        noise = gen.noise(source.shape[0], source.device) if noise is None else noise  # (B, 4, h, w)
        with timer("sampling loop"):
            z = sample_latents(gen.process, counter, noise, cond, sampling.steps,
                                        sampling.w_src, sampling.w_fus, sampling.sampler)
        with timer("VAE decoding"):
            images = gen.vae.decode_latents(z.float()).clamp(-1, 1)  # (B, 3, H, W)
    return images.float(), counter.nfe


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def photo_size(dataset: data.PairDataset) -> tuple[int, int]:
    """(H, W) of the dataset's photos, read from its first target image.

    note: some copies store the 176-wide photo padded to a square; the person crop (what
    data.py loads and evaluate.py scores) then has DeepFashion's 256:176 aspect.
    """
    with Image.open(dataset.image_path(dataset.pairs[0][1])) as im:
        w, h = im.size
    padded = w == h and dataset.frame == data.FRAME  # a square DeepFashion copy
    return (h, round(h * data.FRAME[1] / data.FRAME[0])) if padded else (h, w)


def write_images(images, batch, out: Path, size) -> list[str]:
    """`{source}___{target}.png`, at the photos' own size: what evaluate.py matches on."""
    images = data.resize_for_eval(images, size)  # (B, 3, H', W') back to the photo's aspect
    names = []
    for img, s, t in zip(images, batch["source_name"], batch["target_name"]):
        names.append(f"{Path(s).stem}___{Path(t).stem}.png")
        data.tensor_to_pil(img).save(out / names[-1])
    return names
