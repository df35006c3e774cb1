"""Generation with honest timing: test pairs to a folder, a side-by-side speed benchmark, streaming.

A trained FPDM or RPFM checkpoint (written by train.py; it carries its VAE and, for FPDM, its
fusion model) draws the person of each source image in each target pose. Generation has three
parts, timed separately because they scale differently:

  1. source encoding: the source tokens (and FPDM's fusion embedding), once per source;
  2. the sampling loop: `steps` x guidance branches evaluations of the UNet (the NFE);
  3. VAE decoding of the final latent.

Timing is honest: warm-up batches are excluded, CUDA is synchronised before every clock read,
and the NFE is counted by wrapping the model, not computed from a formula.

Run:
  python sample.py --ckpt runs/tiny/rpfm.pt                  # test pairs -> runs/samples/rpfm/
  python sample.py --benchmark --preset tiny                 # FPDM vs RPFM speed, no checkpoint
  python sample.py --ckpt runs/tiny/rpfm.pt --source IMG --poses poses.csv   # streaming -> GIF
  python evaluate.py --generated runs/samples/rpfm --real <data>/test_highres

Papers: FPDM (arXiv 2412.07333), flow matching (Lipman et al., arXiv 2210.02747),
DDIM (Song et al., arXiv 2010.02502).

Shape letters: B batch, H W image size, h w latent size, N source tokens, D width.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see the note in train.py

import csv
import dataclasses
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

import data
import fusion
import train
import unet as unet_lib
import vae as vae_lib

option = train.option  # one dataclass field = one --flag, as in train.py


@dataclass
class SampleConfig:
    ckpt: str = option("", "an fpdm or rpfm checkpoint written by train.py")
    data: str = option("", "dataset root; empty: the dataset the checkpoint was trained on")
    split: str = option("test", "which pairs to generate", choices=("train", "test"))
    out: str = option("", "output folder; empty: runs/samples/<method>")
    limit: int = option(0, "generate only the first N pairs (0: all)")
    steps: int = option(0, "sampling steps; 0: the process's default (DDIM 50 / flow matching few)")
    solver: str = option("", "rpfm ODE solver: euler, midpoint or heun (empty: default)")
    sampler: str = option("", "fpdm sampler: ddim or ddpm (empty: default)")
    w_src: float = option(2.0, "cumulative CFG weight of pose + source tokens")
    w_fus: float = option(2.5, "cumulative CFG weight of the fusion embedding (fpdm); equal to "
                               "--w-src it is plain CFG and the middle branch is skipped")
    batch_size: int = option(16, "images generated at once")
    seed: int = option(0, "seed of the initial noise")
    ema: bool = option(True, "sample with the EMA weights (as DiT does)")
    device: str = option("auto", "auto, cpu, cuda, mps ...")
    bf16: bool = option(True, "bf16 autocast on CUDA (ignored on CPU)")
    compile: bool = option(False, "torch.compile the UNet (CUDA; the first batches compile)")
    warmup: int = option(2, "untimed warm-up batches before any clock is read")
    benchmark: bool = option(False, "time random-init FPDM and RPFM side by side, no checkpoint")
    preset: str = option("tiny", "train.py preset sizing the --benchmark models",
                        choices=tuple(train.PRESETS))
    repeats: int = option(5, "timed batches per method in --benchmark")
    source: str = option("", "streaming: one source photo")
    poses: str = option("", "streaming: CSV, one frame a row of 36 numbers x0,y0,...,x17,y17 "
                            "(256x176 frame, -1 missing)")
    pose_frame: str = option("256x176", "streaming: HxW frame of the keypoints in --poses")
    fps: float = option(10.0, "frames per second of the streaming GIF")


# ----------------------------------------------------------------------------------------------
# Models from a checkpoint (or random, for --benchmark)
# ----------------------------------------------------------------------------------------------

@dataclass
class Generator:
    """Everything one method needs to draw: process, UNet, VAE, optional fusion model."""
    method: str
    process: object
    unet: nn.Module
    vae: nn.Module
    fusion: nn.Module | None
    image_size: int
    data_root: str = ""         # the dataset it was trained on ("" = the built-in benchmark)
    bench_size: str = "64x44"   # that benchmark's photo size


def from_checkpoint(path: str, use_ema: bool, device) -> Generator:
    ckpt = train.load_checkpoint(path, ("fpdm", "rpfm"))
    tcfg = train.TrainConfig(**ckpt["config"]["train"])
    model = unet_lib.UNet(ckpt["config"]["model"])
    model.load_state_dict(ckpt["ema" if use_ema else "model"])
    vae = vae_lib.VAE(ckpt["vae"]["config"])
    vae.load_state_dict(ckpt["vae"]["state"])
    fus = None
    if "fusion" in ckpt:
        fus = fusion.FusionModel(ckpt["fusion"]["config"], load_pretrained=False)
        fus.load_state_dict(ckpt["fusion"]["state"])
    return Generator(ckpt["method"], train.make_process(ckpt["method"], tcfg),
                     *(train.frozen(m, device) if m is not None else None
                       for m in (model, vae, fus)),
                     image_size=tcfg.image_size, data_root=tcfg.data, bench_size=tcfg.bench_size)


def random_generator(method: str, preset: str, device) -> Generator:
    """Randomly initialised models of a train.py preset: speed does not depend on the weights."""
    tcfg = train.parse_config(["--method", method, "--preset", preset])
    vae = vae_lib.VAE(tcfg.vae)
    # note: never pretrained weights here (speed does not depend on them, nothing to download)
    fus = fusion.FusionModel(tcfg.fusion, load_pretrained=False) if method == "fpdm" else None
    stage = train.latent_stage(tcfg, vae, fus, pose_channels=3)
    return Generator(method, train.make_process(method, tcfg),
                     *(train.frozen(m, device) if m is not None else None
                       for m in (stage.model, vae, fus)), image_size=tcfg.image_size)


# ----------------------------------------------------------------------------------------------
# Timing: three phases, synchronised clocks, counted model evaluations
# ----------------------------------------------------------------------------------------------

class CountingModel(nn.Module):
    """Counts UNet evaluations per image: a batched 3-branch call on B images counts 3."""

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


def autocast_for(cfg: SampleConfig, device):
    return torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")


def sampler_kwargs(gen: Generator, cfg: SampleConfig) -> dict:
    """The process-specific sampler flag: --sampler for FPDM's diffusion, --solver for RPFM."""
    if gen.method == "fpdm":
        return {"sampler": cfg.sampler} if cfg.sampler else {}
    return {"solver": cfg.solver} if cfg.solver else {}


@torch.no_grad()
def generate(gen: Generator, source, pose, cfg: SampleConfig, timer: PhaseTimer, tokens=None):
    """source (B, 3, H, W), pose (B, P, H, W) -> images (B, 3, H, W) in [-1, 1] and the NFE."""
    b, latent = source.shape[0], gen.unet.config.latent_size
    with autocast_for(cfg, source.device):
        with timer("source encoding"):
            cond = {"pose": pose}
            cond["src_tokens"] = gen.unet.encode_source(source) if tokens is None else tokens
            if gen.fusion is not None:
                cond["fusion"] = gen.fusion.embed(source, pose)  # (B, D): depends on the pose
        noise = torch.randn(b, gen.unet.config.latent_channels, latent, latent,
                            device=source.device)  # (B, 4, h, w)
        counter = CountingModel(gen.unet, b)
        with timer("sampling loop"):
            z = gen.process.sample(counter, noise, cond, cfg.steps or
                                   train.process_default_steps(gen.process),
                                   w_src=cfg.w_src, w_fus=cfg.w_fus, **sampler_kwargs(gen, cfg))
        with timer("VAE decoding"):
            images = gen.vae.decode_latents(z.float()).clamp(-1, 1)  # (B, 3, H, W)
    return images.float(), counter.nfe


def timing_row(gen: Generator, timer: PhaseTimer, images: int, nfe: float, device) -> dict:
    total = sum(timer.seconds.values())
    row = {"method": gen.method, "ms_per_image": 1000 * total / images,
           "images_per_s": images / total, "nfe": nfe, "device": device_name(device),
           "images": images}
    row.update({f"ms_{k.split()[0].lower()}": 1000 * v / images for k, v in timer.seconds.items()})
    return row


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def print_timing(rows: list[dict]):
    """A table for people, then one JSON line per method for scripts."""
    print(f"{'method':6s} | {'ms/image':>9s} | {'images/s':>9s} | {'NFE':>5s} | "
          f"{'source ms':>9s} | {'loop ms':>9s} | {'decode ms':>9s} | device")
    for r in rows:
        print(f"{r['method']:6s} | {r['ms_per_image']:9.2f} | {r['images_per_s']:9.2f} | "
              f"{r['nfe']:5.0f} | {r.get('ms_source', 0):9.2f} | {r.get('ms_sampling', 0):9.2f} | "
              f"{r.get('ms_vae', 0):9.2f} | {r['device']}")
    for r in rows:
        print(json.dumps(r))


# ----------------------------------------------------------------------------------------------
# 1. Test pairs to a folder (named for evaluate.py) and a grid
# ----------------------------------------------------------------------------------------------

def sample_dataset(cfg: SampleConfig, device):
    gen = from_checkpoint(cfg.ckpt, cfg.ema, device)
    maybe_compile(gen, cfg, device)
    root = cfg.data or gen.data_root or str(
        data.ensure_benchmark(size=data.parse_size(gen.bench_size, "bench_size")))
    dataset = data.PairDataset(root, cfg.split, gen.image_size)
    size = photo_size(dataset)  # generated files get the ground truth's shape
    if cfg.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.limit, len(dataset))))
    out = Path(cfg.out or Path("runs") / "samples" / gen.method)
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False)
    warm_up(gen, next(iter(loader)), cfg, device)
    timer, count, nfe, grid = PhaseTimer(device), 0, 0.0, None
    torch.manual_seed(cfg.seed)
    for batch in tqdm(loader, desc=f"[{gen.method}] generating"):
        src, pose = batch["source"].to(device), batch["target_pose"].to(device)
        images, nfe = generate(gen, src, pose, cfg, timer)
        write_images(images, batch, out, size)
        grid = grid or grid_rows(batch, images)
        count += len(images)
    # the grid goes beside the folder: inside it, evaluate.py would look for its ground truth
    grid_path = out.with_name(out.name + "_grid.png")
    data.save_grid([[train.enlarge(c) for c in row] for row in grid], grid_path,
                   labels=("source", "target pose", "generated", "target"))
    print(f"[{gen.method}] wrote {count} images to {out}/ and the grid {grid_path}")
    print_timing([timing_row(gen, timer, count, nfe, device)])


def warm_up(gen, batch, cfg, device):
    """Untimed batches first: allocator, cuDNN autotuning and torch.compile happen here."""
    for _ in range(cfg.warmup):
        generate(gen, batch["source"].to(device), batch["target_pose"].to(device), cfg,
                 PhaseTimer(device))


def maybe_compile(gen: Generator, cfg: SampleConfig, device):
    if cfg.compile:
        if device.type != "cuda":
            print("note: --compile is meant for CUDA; compiling for the CPU anyway")
        gen.unet.forward = torch.compile(gen.unet.forward)


def photo_size(dataset: data.PairDataset) -> tuple[int, int]:
    """(H, W) of the dataset's photos, read from its first target image.

    note: some copies store the 176-wide photo padded to a square; the person crop (what
    data.py loads and evaluate.py scores) then has DeepFashion's 256:176 aspect.
    """
    with Image.open(dataset.image_path(dataset.pairs[0][1])) as im:
        w, h = im.size
    return (h, round(h * data.FRAME[1] / data.FRAME[0])) if w == h else (h, w)


def write_images(images, batch, out: Path, size):
    """`{source}___{target}.png`, at the photos' own size: what evaluate.py matches on."""
    images = data.resize_for_eval(images, size)  # (B, 3, H', W') back to the photo's aspect
    for img, s, t in zip(images, batch["source_name"], batch["target_name"]):
        data.tensor_to_pil(img).save(out / f"{Path(s).stem}___{Path(t).stem}.png")


def grid_rows(batch, images, n: int = 8):
    pose = batch["target_pose"][:, :3] * 2 - 1  # pose maps to [-1, 1] like the photos
    rows = zip(batch["source"], pose, images.cpu(), batch["target"])
    return [list(r) for r, _ in zip(rows, range(n))]


# ----------------------------------------------------------------------------------------------
# 2. The speed benchmark: random-init FPDM and RPFM of one preset, side by side
# ----------------------------------------------------------------------------------------------

def benchmark(cfg: SampleConfig, device):
    rows = []
    for method in ("fpdm", "rpfm"):
        torch.manual_seed(cfg.seed)
        gen = random_generator(method, cfg.preset, device)
        maybe_compile(gen, cfg, device)
        s, b = gen.image_size, cfg.batch_size
        source = torch.rand(b, 3, s, s, device=device) * 2 - 1  # (B, 3, H, W)
        pose = torch.rand(b, 3, s, s, device=device)  # (B, 3, H, W)
        warm_up(gen, {"source": source, "target_pose": pose}, cfg, device)
        timer = PhaseTimer(device)
        for _ in tqdm(range(cfg.repeats), desc=f"[{method}] timing"):
            _, nfe = generate(gen, source, pose, cfg, timer)
        rows.append(timing_row(gen, timer, cfg.repeats * b, nfe, device))
    print(f"preset {cfg.preset}, batch {cfg.batch_size}, {cfg.repeats} timed batches after "
          f"{cfg.warmup} warm-up, w_src {cfg.w_src}, w_fus {cfg.w_fus}")
    print_timing(rows)
    ratio = rows[0]["ms_per_image"] / rows[1]["ms_per_image"]
    print(f"RPFM is {ratio:.1f}x faster than FPDM per image "
          f"(NFE {rows[0]['nfe']:.0f} vs {rows[1]['nfe']:.0f})")
    print(json.dumps({"speedup_rpfm_over_fpdm": ratio, "preset": cfg.preset}))


# ----------------------------------------------------------------------------------------------
# 3. Streaming: one source, a sequence of poses, one frame as each pose arrives
# ----------------------------------------------------------------------------------------------

def read_pose_csv(path: str) -> list[np.ndarray]:
    """One frame a row: 36 numbers x0,y0,...,x17,y17; a header line of names is allowed."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--poses {p} does not exist")
    frames = []
    with open(p, newline="") as f:
        for row_no, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or (row_no == 1 and not _is_number(cells[0])):
                continue  # blank line, or a header
            if len(cells) != 36 or not all(map(_is_number, cells)):
                raise ValueError(f"{p} row {row_no}: expected 36 numbers (x, y of the 18 "
                                 f"OpenPose joints), got {len(cells)} values")
            frames.append(np.asarray(cells, dtype=np.float32).reshape(18, 2))  # (18, 2) x, y
    if not frames:
        raise ValueError(f"{p}: no pose rows found")
    return frames


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_source(path: str, size: int, device) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--source {p} does not exist")
    try:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
    except OSError:
        raise ValueError(f"--source {p} is not an image PIL can read") from None
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()  # (3, H, W)
    return (x / 127.5 - 1).unsqueeze(0).to(device)  # (1, 3, H, W) in [-1, 1]


@torch.no_grad()
def stream(cfg: SampleConfig, device):
    gen = from_checkpoint(cfg.ckpt, cfg.ema, device)
    maybe_compile(gen, cfg, device)
    frames = read_pose_csv(cfg.poses)
    frame_hw = data.parse_size(cfg.pose_frame, "--pose-frame")
    source = load_source(cfg.source, gen.image_size, device)
    s = gen.image_size
    encode = PhaseTimer(device)
    with encode("source encoding"):
        tokens = gen.unet.encode_source(source)  # (1, N, D): once for the whole stream
    pose_maps = [pose_tensor(kp, s, frame_hw, device) for kp in frames]
    for _ in range(cfg.warmup):
        generate(gen, source, pose_maps[0], cfg, PhaseTimer(device), tokens)
    out_frames, latencies = [], []
    for pose in tqdm(pose_maps, desc="[stream] frames"):
        timer = PhaseTimer(device)
        image, nfe = generate(gen, source, pose, cfg, timer, tokens)
        latencies.append(sum(timer.seconds.values()))
        out_frames.append(data.tensor_to_pil(torch.cat([image[0].cpu(), pose[0, :3].cpu() * 2 - 1], 2)))
    write_gif(out_frames, cfg, gen)
    report_stream(latencies, encode.seconds["source encoding"], nfe, gen, device)


def pose_tensor(kp, size: int, frame_hw, device) -> torch.Tensor:
    pose = data.render_pose(kp, size, size, frame=frame_hw)  # (H, W, 3) uint8
    return torch.from_numpy(pose).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)


def write_gif(frames, cfg: SampleConfig, gen: Generator):
    out = Path(cfg.out or Path("runs") / "samples" / f"{gen.method}_stream")
    out.mkdir(parents=True, exist_ok=True)
    frames[0].save(out / "stream.gif", save_all=True, append_images=frames[1:],
                   duration=int(1000 / cfg.fps), loop=0)
    print(f"[stream] wrote {len(frames)} frames (generated | pose) to {out / 'stream.gif'}")


def report_stream(latencies, encode_s, nfe, gen, device):
    ms = 1000 * np.asarray(latencies)
    row = {"method": gen.method, "mode": "stream", "frames": len(ms),
           "ms_per_frame": float(ms.mean()), "ms_per_frame_max": float(ms.max()),
           "frames_per_s": float(1000 / ms.mean()), "ms_source_once": 1000 * encode_s,
           "nfe": nfe, "device": device_name(device),
           # the same keys as the other modes, so one parser reads every line
           "ms_per_image": float(ms.mean()), "images_per_s": float(1000 / ms.mean())}
    print(f"[stream] {row['frames']} frames: {row['ms_per_frame']:.1f} ms/frame mean "
          f"({row['ms_per_frame_max']:.1f} max), {row['frames_per_s']:.2f} frames/s, "
          f"source encoded once in {row['ms_source_once']:.1f} ms, NFE {nfe:.0f}")
    print(json.dumps(row))


# ----------------------------------------------------------------------------------------------

def parse_config(argv=None) -> SampleConfig:
    args = train.build_parser(SampleConfig, __doc__.splitlines()[0]).parse_args(argv)
    cfg = dataclasses.replace(SampleConfig(), **{k: v for k, v in vars(args).items()
                                                  if v is not None})
    if not cfg.benchmark and not cfg.ckpt:
        raise ValueError("--ckpt is required (or --benchmark for random-init timing)")
    if bool(cfg.source) != bool(cfg.poses):
        raise ValueError("streaming needs both --source IMG and --poses FILE")
    return cfg


def run(cfg: SampleConfig):
    device = train.pick_device(cfg.device)
    if cfg.benchmark:
        benchmark(cfg, device)
    elif cfg.poses:
        stream(cfg, device)
    else:
        sample_dataset(cfg, device)


def main(argv=None):
    try:
        run(parse_config(argv))
    except (ValueError, FileNotFoundError, data.DataError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
