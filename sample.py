"""Generation with honest timing: test pairs to a folder, a fair speed benchmark, streaming.

A trained FPDM, RPFM or reflow-student checkpoint (written by train.py; it carries its VAE and, for
FPDM, its fusion model) draws the person of each source image in each target pose. Generation has
three parts, timed separately because they scale differently:

  1. source encoding: the source tokens (and FPDM's fusion embedding), once per source;
  2. the sampling loop: steps x guidance branches evaluations of the UNet (the NFE);
  3. VAE decoding of the final latent.

Timing is honest: warm-up batches are excluded, CUDA is synchronised before every clock read,
and the NFE is counted by wrapping the model, not computed from a formula. Each process samples
at its release settings unless a flag says otherwise: FPDM DDPM 20 steps, RPFM Euler 10 steps,
both with guidance weight 2 (w_src = w_fus: two branches, so 40 and 20 NFE per image); RPFM's
reflow student Euler 2 steps with its guidance baked in (one branch: NFE 2).

The benchmark times fixed settings, so no default decides the comparison: FPDM's release row
first, FPDM with DDIM 50 (the setting of CFLD-style samplers), FPDM and RPFM at equal NFE (they run
the same UNet equally often: there the times differ only by what each method adds), and the
reflow student at 2 and 1 steps; it prints FPDM's release time over the fastest RPFM row.

Streaming draws one frame per pose as a live system would: the source encoded once, ONE noise for
every frame (so the person does not change from frame to frame), each frame timed from keypoints to
image (pose drawing, sampling loop, VAE decoding), and a flicker figure: the mean change between
consecutive output frames beside that between consecutive pose maps.

Run:
  python sample.py                        # newest finished runs/tiny/{fpdm,rpfm}.pt -> runs/samples/<method>/
  python evaluate.py                      # then: score that folder (it finds it)
  python sample.py --ckpt runs/tiny/rpfm.pt --limit 64 --steps 4
  python sample.py --benchmark --preset tiny                 # FPDM vs RPFM speed, random weights
  python sample.py --ckpt runs/tiny/reflow.pt --source IMG --poses poses.csv   # streaming -> GIF

Papers: FPDM (Lee et al., arXiv 2412.07333), RPFM (Jeong et al., arXiv 2505.03562), flow
matching (Lipman et al., arXiv 2210.02747), DDIM (Song et al., arXiv 2010.02502).

Shape letters: B batch, P pose channels, H W image size, h w latent size, N source tokens, D width.
"""
from __future__ import annotations

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

import data
import pipeline
from data import option  # one dataclass field = one --flag
from pipeline import Generator, Sampling


@dataclass
class SampleConfig:
    ckpt: str = option("", "an fpdm, rpfm or reflow checkpoint written by train.py; empty: the newest "
                           "finished one in <runs>/<preset>/")
    runs: str = option("runs", "train.py's runs folder: checkpoints in <runs>/<preset>/, "
                               "samples written to <runs>/samples/<method>/")
    preset: str = option("tiny", "named model size: the folder searched without --ckpt, and the "
                                 "models of --benchmark", choices=tuple(pipeline.MODEL_PRESETS))
    data: str = option("", "dataset root; empty: the dataset the checkpoint was trained on")
    split: str = option("test", "which pairs to generate", choices=("train", "test"))
    out: str = option("", "output folder; empty: <runs>/samples/<method>")
    limit: int = option(0, "generate only the first N pairs (0: all)")
    steps: int = option(0, "sampling steps; 0: the process's default (fpdm: DDPM 20, rpfm: Euler 10, "
                           "reflow: Euler 2)")
    sampler: str = option("", "fpdm sampler: ddpm or ddim (empty: ddpm, FPDM's release)")
    solver: str = option("", "rpfm / reflow ODE solver: euler, midpoint or heun (empty: euler)")
    w_src: float = option(None, "guidance weight of pose + source tokens (default: the process's, 2.0; "
                                "reflow 1.0, its guidance is baked in)")
    w_fus: float = option(None, "guidance weight of the fusion embedding, fpdm (default: the "
                                "process's, 2.0); equal to --w-src it is plain CFG: 2 branches, not 3")
    batch_size: int = option(16, "images generated at once")
    seed: int = option(0, "seed of the initial noise")
    ema: bool = option(True, "sample with the EMA weights (as DiT does)")
    device: str = option("auto", "auto, cpu, cuda, mps ...")
    threads: int = option(0, "torch CPU threads (0: torch's default, one per core); at batch 1 (streaming) "
                             "the tiny UNet's ops are too small to split, and 1 avoids spinning threads")
    precision: str = option("auto", "auto: bf16 autocast on CUDA, float32 elsewhere; bf16: autocast "
                                    "on any device; fp32", choices=pipeline.PRECISIONS)
    compile: bool = option(False, "torch.compile the UNet (CUDA, or CPU streaming; the untimed warm-up compiles)")
    warmup: int = option(2, "untimed warm-up batches before any clock is read")
    benchmark: bool = option(False, "time random-init FPDM, RPFM and the reflow student at fixed "
                                    "settings, no checkpoint")
    repeats: int = option(5, "timed batches per row in --benchmark")
    source: str = option("", "streaming: one source photo")
    poses: str = option("", "streaming: CSV, one frame a row of 36 numbers x0,y0,...,x17,y17 "
                            "(256x176 frame, -1 missing)")
    pose_frame: str = option("256x176", "streaming: HxW frame of the keypoints in --poses")
    fps: float = option(10.0, "frames per second of the streaming GIF")


SAMPLING_FLAGS = ("steps", "sampler", "solver", "w_src", "w_fus")


# ----------------------------------------------------------------------------------------------
# Timing: three phases, synchronised clocks, counted model evaluations
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
             tokens=None, noise=None):
    """source (B, 3, H, W), pose (B, P, H, W) -> images (B, 3, H, W) in [-1, 1] and the counted NFE.
    tokens: the source already encoded (streaming); noise (B, C, h, w): None draws it here."""
    counter = CountingModel(gen.unet, source.shape[0])
    with pipeline.autocast_for(precision, source.device):
        with timer("source encoding"):
            cond = pipeline.build_cond(gen.unet, gen.fusion, source, pose, tokens)
        noise = gen.noise(source.shape[0], source.device) if noise is None else noise  # (B, 4, h, w)
        with timer("sampling loop"):
            z = pipeline.sample_latents(gen.process, counter, noise, cond, sampling.steps,
                                        sampling.w_src, sampling.w_fus, sampling.sampler)
        with timer("VAE decoding"):
            images = gen.vae.decode_latents(z.float()).clamp(-1, 1)  # (B, 3, H, W)
    return images.float(), counter.nfe


def timing_row(label: str, gen: Generator, sampling: Sampling, timer: PhaseTimer, images: int,
               nfe: float, batch: int, device) -> dict:
    total = sum(timer.seconds.values())
    row = {"label": label, "method": gen.method, **dataclasses.asdict(sampling), "nfe": nfe,
           "ms_per_image": 1000 * total / images, "images_per_s": images / total, "batch": batch,
           "images": images, "image_size": gen.image_size, "device": device_name(device)}
    row.update({f"ms_{k.split()[0].lower()}": 1000 * v / images for k, v in timer.seconds.items()})
    return row


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def print_timing(rows: list[dict]):
    """A table for people, then one JSON line per row for scripts."""
    width = max(len(r["label"]) for r in rows)
    print(f"{'':{width}s} | sampler | steps |  NFE | w src/fus | ms/image | images/s | source ms | "
          f"loop ms | decode ms | device")
    for r in rows:
        w = f"{r['w_src']:g}/{r['w_fus']:g}"
        print(f"{r['label']:{width}s} | {r['sampler']:7s} | {r['steps']:5d} | {r['nfe']:4.0f} | {w:>9s} | "
              f"{r['ms_per_image']:8.2f} | {r['images_per_s']:8.2f} | {r.get('ms_source', 0):9.2f} | "
              f"{r.get('ms_sampling', 0):7.2f} | {r.get('ms_vae', 0):9.2f} | {r['device']}")
    for r in rows:
        print(json.dumps(r))


# ----------------------------------------------------------------------------------------------
# 1. Test pairs to a folder (named for evaluate.py, recorded in samples.json) and a grid
# ----------------------------------------------------------------------------------------------

def find_checkpoint(cfg: SampleConfig) -> str:
    """--ckpt, or the newest finished fpdm/rpfm checkpoint that `python train.py` left in runs/<preset>/."""
    if cfg.ckpt:
        return cfg.ckpt
    folder = Path(cfg.runs) / cfg.preset
    path = pipeline.newest_checkpoint(folder)
    if path is None:
        raise FileNotFoundError(f"no fpdm.pt, rpfm.pt or reflow.pt in {folder}/: run `python train.py --method "
                                f"rpfm` first (or `python sample.py --benchmark`, which needs none)")
    print(f"sample.py: using {path}, the newest finished checkpoint in {folder}/ (--ckpt picks another)")
    return str(path)


def sampling_from_flags(gen: Generator, cfg: SampleConfig) -> Sampling:
    """The flags over the process's release defaults; the other method's sampler flag is an error."""
    mine, other = ("sampler", "solver") if gen.method == "fpdm" else ("solver", "sampler")
    if getattr(cfg, other):
        raise ValueError(f"--{other} is for {'rpfm and reflow' if other == 'solver' else 'fpdm'} checkpoints; "
                         f"this {gen.method} checkpoint takes --{mine}")
    return pipeline.sampling_for(gen.process, cfg.steps, getattr(cfg, mine), cfg.w_src, cfg.w_fus)


def open_pairs(gen: Generator, cfg: SampleConfig):
    """(dataset, photo size (H, W)): --data, or the dataset the checkpoint was trained on."""
    root = cfg.data or gen.data_root or str(
        data.ensure_benchmark(size=data.parse_size(gen.bench_size, "bench_size")))
    dataset = data.PairDataset(root, cfg.split, gen.image_size)
    return dataset, photo_size(dataset)  # generated files get the ground truth's shape


def sample_dataset(cfg: SampleConfig, device):
    gen = Generator.from_checkpoint(find_checkpoint(cfg), cfg.ema, device)
    sampling = sampling_from_flags(gen, cfg)
    maybe_compile(gen, cfg, device)
    dataset, size = open_pairs(gen, cfg)
    pairs = dataset.pairs[:cfg.limit] if cfg.limit else dataset.pairs
    subset = torch.utils.data.Subset(dataset, range(len(pairs)))
    out = Path(cfg.out or Path(cfg.runs) / "samples" / gen.method)
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, shuffle=False)
    warm_up(gen, next(iter(loader)), sampling, cfg, device)
    timer, files, nfe, grid = PhaseTimer(device), [], 0.0, None
    torch.manual_seed(cfg.seed)
    for batch in data.progress(loader, desc=f"[{gen.method}] generating"):
        src, pose = batch["source"].to(device), batch["target_pose"].to(device)
        images, nfe = generate(gen, src, pose, sampling, timer, cfg.precision)
        files += write_images(images, batch, out, size)
        grid = grid or grid_rows(batch, images)
    # the grid goes beside the folder: inside it, evaluate.py would look for its ground truth
    grid_path = out.with_name(out.name + "_grid.png")
    data.save_grid([[pipeline.enlarge(c) for c in row] for row in grid], grid_path,
                   labels=("source", "target pose", "generated", "target"))
    record(out, gen, dataset, size, sampling, cfg, [(s, t, f) for (s, t), f in zip(pairs, files)])
    print(f"[{gen.method}] wrote {len(files)} images to {out}/ and the grid {grid_path}")
    label = f"{gen.method} ({Path(gen.checkpoint).name})"
    print_timing([timing_row(label, gen, sampling, timer, len(files), nfe, cfg.batch_size, device)])


def record(out: Path, gen: Generator, dataset, size, sampling: Sampling, cfg: SampleConfig, pairs):
    """samples.json: what evaluate.py needs to score exactly these pairs (and their baselines)."""
    pipeline.write_sample_record(out, {
        "method": gen.method, "checkpoint": gen.checkpoint, "data_root": str(dataset.root.resolve()),
        "split": cfg.split, "photo_size": list(size), "image_size": gen.image_size,
        "sampling": dataclasses.asdict(sampling), "seed": cfg.seed, "ema": cfg.ema,
        "count": len(pairs), "pairs": [list(p) for p in pairs]})  # [source, target, file]


def warm_up(gen, batch, sampling: Sampling, cfg: SampleConfig, device):
    """Untimed batches first: allocator, cuDNN autotuning and torch.compile happen here."""
    for _ in range(cfg.warmup):
        generate(gen, batch["source"].to(device), batch["target_pose"].to(device), sampling,
                 PhaseTimer(device), cfg.precision)


def maybe_compile(gen: Generator, cfg: SampleConfig, device):
    """torch.compile the UNet: it fuses the many small ops whose launch overhead dominates at batch 1.
    The compile itself runs in the untimed warm-up (on 2 CPU cores about 1.5 minutes for the tiny
    UNet; it paid off for streaming, 41 -> 31 ms a frame, RESULTS.md)."""
    if cfg.compile:
        if device.type == "cpu":
            print("note: --compile on the CPU: the warm-up compiles first (about 1.5 minutes on 2 cores)")
        gen.unet.forward = torch.compile(gen.unet.forward)


def photo_size(dataset: data.PairDataset) -> tuple[int, int]:
    """(H, W) of the dataset's photos, read from its first target image.

    note: some copies store the 176-wide photo padded to a square; the person crop (what
    data.py loads and evaluate.py scores) then has DeepFashion's 256:176 aspect.
    """
    with Image.open(dataset.image_path(dataset.pairs[0][1])) as im:
        w, h = im.size
    return (h, round(h * data.FRAME[1] / data.FRAME[0])) if w == h else (h, w)


def write_images(images, batch, out: Path, size) -> list[str]:
    """`{source}___{target}.png`, at the photos' own size: what evaluate.py matches on."""
    images = data.resize_for_eval(images, size)  # (B, 3, H', W') back to the photo's aspect
    names = []
    for img, s, t in zip(images, batch["source_name"], batch["target_name"]):
        names.append(f"{Path(s).stem}___{Path(t).stem}.png")
        data.tensor_to_pil(img).save(out / names[-1])
    return names


def grid_rows(batch, images, n: int = 8):
    pose = batch["target_pose"][:, :3] * 2 - 1  # pose maps to [-1, 1] like the photos
    rows = zip(batch["source"], pose, images.cpu(), batch["target"])
    return [list(r) for r, _ in zip(rows, range(n))]


# ----------------------------------------------------------------------------------------------
# 2. The speed benchmark: random-init FPDM and RPFM of one preset at fixed settings
# ----------------------------------------------------------------------------------------------

BENCHMARK_W = 2.0  # FPDM's and RPFM's release guidance weight, w_src = w_fus: two branches
# (label, method, sampler, steps, w). FPDM's release first; DDIM 50 is the CFLD / X-MDPT-style
# setting; the next two rows have equal NFE (20): the same UNet runs equally often, so their
# times differ only by what the method adds around it (FPDM's fusion embedding), not by steps.
# Last, RPFM's reflow student (the same UNet; guidance baked in, so w 1: one branch, NFE = steps).
BENCHMARK_ROWS = (
    ("FPDM release", "fpdm", "ddpm", 20, BENCHMARK_W),
    ("FPDM DDIM 50", "fpdm", "ddim", 50, BENCHMARK_W),
    ("FPDM at RPFM's NFE", "fpdm", "ddim", 10, BENCHMARK_W),
    ("RPFM default", "rpfm", "euler", 10, BENCHMARK_W),
    ("RPFM reflow, 2 steps", "reflow", "euler", 2, 1.0),
    ("RPFM reflow, 1 step", "reflow", "euler", 1, 1.0),
)
BENCHMARK_REFERENCE = "RPFM default"


def benchmark_inputs(gen: Generator, batch: int, seed: int, device):
    """Random source (B, 3, H, W) in [-1, 1] and pose map (B, 3, H, W) in [0, 1], the same for every row."""
    g = torch.Generator().manual_seed(seed)
    s = gen.image_size
    source = torch.rand(batch, 3, s, s, generator=g) * 2 - 1  # (B, 3, H, W)
    return source.to(device), torch.rand(batch, 3, s, s, generator=g).to(device)  # (B, 3, H, W)


def benchmark(cfg: SampleConfig, device):
    gens = {}
    for method in pipeline.LATENT_METHODS:
        torch.manual_seed(cfg.seed)
        gens[method] = Generator.random_init(method, cfg.preset, device)
        maybe_compile(gens[method], cfg, device)
    source, pose = benchmark_inputs(gens["fpdm"], cfg.batch_size, cfg.seed, device)
    rows = [(label, gens[m], Sampling(steps, sampler, w, w)) for label, m, sampler, steps, w in BENCHMARK_ROWS]
    for _, gen, sampling in rows:
        for _ in range(cfg.warmup):
            generate(gen, source, pose, sampling, PhaseTimer(device), cfg.precision)
    timers, nfes = [PhaseTimer(device) for _ in rows], [0.0] * len(rows)
    # note: rows take turns within each repeat, so a slower or busier moment of a shared machine
    # falls on every row alike instead of on whichever row happened to run then
    for _ in data.progress(range(cfg.repeats), desc="[benchmark] repeats"):
        for i, (_, gen, sampling) in enumerate(rows):
            _, nfes[i] = generate(gen, source, pose, sampling, timers[i], cfg.precision)
    results = [timing_row(label, gen, sampling, timer, cfg.repeats * cfg.batch_size, nfe,
                          cfg.batch_size, device)
               for (label, gen, sampling), timer, nfe in zip(rows, timers, nfes)]
    print(f"preset {cfg.preset} ({gens['fpdm'].image_size} px), batch {cfg.batch_size}, random weights, "
          f"{cfg.repeats} timed batches per row after {cfg.warmup} warm-up, precision {cfg.precision}")
    print_timing(results)
    print_ratios(results, cfg.preset)


def print_ratios(rows: list[dict], preset: str):
    """Each row's time per image over RPFM's default row, and FPDM's release over the fastest RPFM
    row, all measured in this one run."""
    base = next(r for r in rows if r["label"] == BENCHMARK_REFERENCE)
    ratios = {r["label"]: r["ms_per_image"] / base["ms_per_image"] for r in rows if r is not base}
    for r in rows:
        if r is not base:
            print(f"{r['label']} ({r['nfe']:.0f} NFE) takes {ratios[r['label']]:.2f}x the time per image of "
                  f"{base['label']} ({base['nfe']:.0f} NFE)")
    print("at equal NFE the two methods run the same UNet equally often: the ratio there is what "
          "the method costs, the others add what the step count costs")
    release = rows[0]
    fastest = min((r for r in rows if r["method"] != "fpdm"), key=lambda r: r["ms_per_image"])
    speedup = release["ms_per_image"] / fastest["ms_per_image"]
    print(f"{release['label']} takes {speedup:.1f}x the time per image of the fastest RPFM row, "
          f"{fastest['label']} (random weights: speed only; the sweep in evaluate.py measures quality)")
    print(json.dumps({"preset": preset, "reference": base["label"], "time_ratio": ratios,
                      "fpdm_release_over_fastest_rpfm": speedup, "fastest_rpfm": fastest["label"]}))


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


@torch.inference_mode()
def stream(cfg: SampleConfig, device):
    """One source, a pose per frame, a frame per pose: the live use (sign language, AR/VR, streaming).

    Each frame is timed as a live system would see it, from keypoints to image: drawing the pose
    map, the sampling loop and VAE decoding (the source is encoded once, before the first frame).
    """
    gen = Generator.from_checkpoint(find_checkpoint(cfg), cfg.ema, device)
    sampling = sampling_from_flags(gen, cfg)
    maybe_compile(gen, cfg, device)
    frames = read_pose_csv(cfg.poses)
    frame_hw = data.parse_size(cfg.pose_frame, "--pose-frame")
    source = load_source(cfg.source, gen.image_size, device)
    encode = PhaseTimer(device)
    with encode("source encoding"):
        tokens = gen.unet.encode_source(source)  # (1, N, D): once for the whole stream
    # note: ONE noise for every frame. The noise picks which of the many plausible images is drawn
    # (which folds, which shade); fresh noise per frame would draw another one each time and the
    # person would shimmer even while the pose stands still. Reseeding before each frame also fixes
    # DDPM's per-step noise, so identical poses give identical frames.
    noise = gen.noise(1, "cpu", torch.Generator().manual_seed(cfg.seed)).to(device)  # (1, C, h, w)
    live = Live(gen, source, tokens, noise, frame_hw, sampling, cfg.precision, cfg.seed)
    for _ in range(cfg.warmup):
        live.frame(frames[0], PhaseTimer(device))
    images, poses, latencies, nfe = [], [], [], 0.0
    for kp in data.progress(frames, desc="[stream] frames"):
        timer = PhaseTimer(device)
        image, pose, nfe = live.frame(kp, timer)
        latencies.append(sum(timer.seconds.values()))
        images.append(image[0].float().cpu())  # (3, H, W) in [-1, 1]
        poses.append(pose[0, :3].float().cpu())  # (3, H, W) in [0, 1]
    write_gif(images, poses, cfg, gen)
    report_stream(latencies, encode.seconds["source encoding"], nfe, gen, sampling, device, flicker(images, poses))


@dataclass
class Live:
    """What stays fixed during a stream: the model, the encoded source, the noise, the settings."""
    gen: Generator
    source: torch.Tensor   # (1, 3, H, W)
    tokens: torch.Tensor   # (1, N, D)
    noise: torch.Tensor    # (1, C, h, w)
    frame_hw: tuple        # the keypoints' frame
    sampling: Sampling
    precision: str
    seed: int

    def frame(self, keypoints, timer: PhaseTimer):
        """(image (1, 3, H, W), pose map (1, P, H, W), NFE) of one frame, its phases added to `timer`."""
        with timer("pose drawing"):
            pose = pose_tensor(keypoints, self.gen.image_size, self.frame_hw, self.source.device)  # (1, 3, H, W)
        torch.manual_seed(self.seed)  # the same DDPM step noise for every frame (see `stream`)
        image, nfe = generate(self.gen, self.source, pose, self.sampling, timer, self.precision, self.tokens,
                              self.noise)
        return image, pose, nfe


def flicker(images: list, poses: list) -> dict:
    """Mean absolute change between consecutive frames, of the output and of the pose maps (both on a
    [0, 1] scale): output change well above the pose's change is flicker the pose does not explain."""
    def change(frames):
        if len(frames) < 2:
            return 0.0
        return float(np.mean([(b - a).abs().mean().item() for a, b in zip(frames, frames[1:])]))
    return {"output_change": change([(x + 1) / 2 for x in images]), "pose_change": change(poses)}


def pose_tensor(kp, size: int, frame_hw, device) -> torch.Tensor:
    pose = data.render_pose(kp, size, size, frame=frame_hw)  # (H, W, 3) uint8
    return torch.from_numpy(pose).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)  # (1, 3, H, W)


def write_gif(images, poses, cfg: SampleConfig, gen: Generator):
    """stream.gif: each frame is generated | pose map, side by side."""
    out = Path(cfg.out or Path(cfg.runs) / "samples" / f"{gen.method}_stream")
    out.mkdir(parents=True, exist_ok=True)
    frames = [data.tensor_to_pil(torch.cat([img, pose * 2 - 1], 2)) for img, pose in zip(images, poses)]  # (3, H, 2W)
    frames[0].save(out / "stream.gif", save_all=True, append_images=frames[1:],
                   duration=int(1000 / cfg.fps), loop=0)
    print(f"[stream] wrote {len(frames)} frames (generated | pose) to {out / 'stream.gif'}")


def report_stream(latencies, encode_s, nfe, gen, sampling: Sampling, device, change: dict):
    ms = 1000 * np.asarray(latencies)
    row = {"method": gen.method, "mode": "stream", **dataclasses.asdict(sampling), "frames": len(ms),
           "ms_per_frame": float(ms.mean()), "ms_per_frame_max": float(ms.max()),
           "frames_per_s": float(1000 / ms.mean()), "ms_source_once": 1000 * encode_s,
           "nfe": nfe, "device": device_name(device), **change,
           # the same keys as the other modes, so one parser reads every line
           "ms_per_image": float(ms.mean()), "images_per_s": float(1000 / ms.mean())}
    print(f"[stream] {row['frames']} frames: {row['ms_per_frame']:.1f} ms/frame mean "
          f"({row['ms_per_frame_max']:.1f} max; pose drawing, sampling and VAE decoding), "
          f"{row['frames_per_s']:.2f} frames/s, source encoded once in {row['ms_source_once']:.1f} ms, NFE {nfe:.0f}")
    print(f"[stream] change between consecutive frames (mean abs, 0-1 scale): output {change['output_change']:.4f}, "
          f"pose map {change['pose_change']:.4f}")
    print(json.dumps(row))


# ----------------------------------------------------------------------------------------------

def parse_config(argv=None) -> SampleConfig:
    cfg, given = data.parse_config(SampleConfig, argv, __doc__.splitlines()[0])
    if cfg.benchmark and given & set(SAMPLING_FLAGS):
        flags = ", ".join("--" + f.replace("_", "-") for f in SAMPLING_FLAGS if f in given)
        raise ValueError(f"--benchmark times fixed settings (FPDM DDPM 20, DDIM 50, DDIM 10; RPFM "
                         f"Euler 10; w = {BENCHMARK_W:g}; the reflow student Euler 2 and 1) so that no "
                         f"flag biases it; drop {flags}")
    if bool(cfg.source) != bool(cfg.poses):
        raise ValueError("streaming needs both --source IMG and --poses FILE")
    return cfg


def run(cfg: SampleConfig):
    device = pipeline.pick_device(cfg.device)
    if device.type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
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
