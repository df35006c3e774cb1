"""Generation with honest timing: test pairs to a folder, a fair speed benchmark, streaming.

A trained FPDM, RPFM or reflow-student checkpoint (written by train.py; it carries its VAE and, for
FPDM, its fusion model) draws the person of each source image in each target pose. Generation has
three parts, timed separately because they scale differently:

  1. source encoding: the source tokens (and FPDM's fusion embedding), and on the CPU presets the
     pose painted in the source's colours; for every pair here (streaming encodes a source once);
  2. the sampling loop: steps x evaluations per step (1 for Euler and DDPM/DDIM, 2 for midpoint and
     Heun) x guidance branches evaluations of the UNet (the NFE);
  3. VAE decoding of the final latent.

Timing is honest: warm-up passes are excluded, CUDA is synchronised before every clock read,
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
image (pose drawing, sampling loop, VAE decoding), and a flicker figure that a frozen output cannot
pass: the output change when a pose repeats (0 with one fixed noise; the first pose is drawn again
after the stream), with its worst frame. streaming.py holds all of this, shared with demo.py.

Run:
  python sample.py                        # newest finished runs/tiny/{fpdm,rpfm,reflow}.pt -> runs/samples/<method>/
  python evaluate.py                      # then: score that folder (it finds it)
  python sample.py --ckpt runs/tiny/rpfm.pt --limit 64 --steps 4
  python sample.py --benchmark --preset tiny                 # FPDM vs RPFM speed, random weights
  python sample.py --ckpt runs/tiny/reflow.pt --source IMG --poses poses.csv   # streaming -> GIF
  python sample.py --video first          # a signers' test sentence (runs/tiny-sign/) beside the truth -> GIF

Papers: FPDM (Lee et al., arXiv 2412.07333), RPFM (Jeong et al., arXiv 2505.03562), flow
matching (Lipman et al., arXiv 2210.02747), DDIM (Song et al., arXiv 2010.02502).

Shape letters: B batch, P pose channels, H W image size, h w latent size, N source tokens, D width.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import cli
import data
import metrics
import pipeline
import poses
import scoring
import streaming
from cli import option  # one dataclass field = one --flag
# the timed generation itself lives in pipeline.py, shared with the sweep and the demo
from pipeline import (Generator, PhaseTimer, Sampling, device_name, generate, photo_size, sync,
                      write_images)


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
    warmup: int = option(2, "untimed warm-up passes (over the first batch) before any clock is read")
    benchmark: bool = option(False, "time random-init FPDM, RPFM and the reflow student at fixed "
                                    "settings, no checkpoint")
    repeats: int = option(5, "timed batches per row in --benchmark")
    video: str = option("", "video mode: generate a test video of a sign dataset from its first frame ('first': "
                            "the first; else its name), beside the ground truth; --ckpt may list several "
                            "PATH[@STEPS], comma-separated")
    source: str = option("", "streaming: one source photo (its pose is unknown, so nothing is painted in its "
                                "colours: the look comes from the source tokens alone)")
    poses: str = option("", "streaming: CSV, one frame a row of 36 numbers x0,y0,...,x17,y17 "
                            "(256x176 frame, -1 or empty missing; an optional '# fps=N' line)")
    pose_frame: str = option("256x176", "streaming: HxW frame of the keypoints in --poses")
    fps: float = option(None, "frames per second of the streaming GIF, above 0 and at most 100 "
                              "(default: the CSV's '# fps=N' line, else 10)")


SAMPLING_FLAGS = ("steps", "sampler", "solver", "w_src", "w_fus")


# ----------------------------------------------------------------------------------------------
# Timing: pipeline.generate times three phases with synchronised clocks and counts the model
# evaluations (CountingModel, PhaseTimer); the rows and the printout are here
# ----------------------------------------------------------------------------------------------

def timing_row(label: str, gen: Generator, sampling: Sampling, timer: PhaseTimer, images: int,
               nfe: float, batch: int, device) -> dict:
    total = sum(timer.seconds.values())
    row = {"label": label, "method": gen.method, **dataclasses.asdict(sampling), "nfe": nfe,
           "ms_per_image": 1000 * total / images, "images_per_s": images / total, "batch": batch,
           "images": images, "image_size": gen.image_size, "device": device_name(device)}
    row.update({f"ms_{k.split()[0].lower()}": 1000 * v / images for k, v in timer.seconds.items()})
    return row


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
    """--ckpt, or the newest finished fpdm / rpfm / reflow checkpoint that `python train.py` left in
    runs/<preset>/ (so pass --ckpt to choose one method)."""
    if cfg.ckpt:
        return cfg.ckpt
    folder = Path(cfg.runs) / cfg.preset
    path = pipeline.newest_checkpoint(folder)
    if path is None:
        sign = " --data sign" if folder.name.endswith("-sign") else ""
        raise FileNotFoundError(f"no fpdm.pt, rpfm.pt or reflow.pt in {folder}/: run `python train.py --method "
                                f"rpfm{sign}` first (or `python sample.py --benchmark`, which needs none)")
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
    root = cfg.data or gen.dataset_root()
    dataset = data.PairDataset(root, cfg.split, gen.image_size)
    return dataset, photo_size(dataset)  # generated files get the ground truth's shape


def sample_dataset(cfg: SampleConfig, device):
    gen = Generator.from_checkpoint(find_checkpoint(cfg), cfg.ema, device)
    sampling = sampling_from_flags(gen, cfg)
    maybe_compile(gen, cfg, device)
    dataset, size = open_pairs(gen, cfg)
    pairs = dataset.pairs[:cfg.limit] if cfg.limit else dataset.pairs
    subset = torch.utils.data.Subset(dataset, range(len(pairs)))
    out = Path(cfg.out or Path(cfg.runs) / "samples" / (gen.method + ("-sign" if gen.data_root == "sign" else "")))
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, shuffle=False)
    warm_up(gen, next(iter(loader)), sampling, cfg, device)
    timer, files, nfe, grid = PhaseTimer(device), [], 0.0, None
    torch.manual_seed(cfg.seed)
    for batch in cli.progress(loader, desc=f"[{gen.method}] generating"):
        src, pose = batch["source"].to(device), batch["target_pose"].to(device)
        images, nfe = generate(gen, src, pose, sampling, timer, cfg.precision,
                               keypoints=pipeline.batch_keypoints(batch, device))
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
    """Untimed passes over one batch first: allocator, cuDNN autotuning and torch.compile happen here."""
    for _ in range(cfg.warmup):
        generate(gen, batch["source"].to(device), batch["target_pose"].to(device), sampling,
                 PhaseTimer(device), cfg.precision, keypoints=pipeline.batch_keypoints(batch, device))


def maybe_compile(gen: Generator, cfg: SampleConfig, device):
    """torch.compile the UNet: it fuses the many small ops whose launch overhead dominates at batch 1.
    The compile itself runs in the untimed warm-up (on 2 CPU cores about 1.5 minutes for the tiny
    UNet; it paid off for streaming, 41 -> 31 ms a frame, RESULTS.md)."""
    if cfg.compile:
        if device.type == "cpu":
            print("note: --compile on the CPU: the warm-up compiles first (about 1.5 minutes on 2 cores)")
        gen.unet.forward = torch.compile(gen.unet.forward)


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
    """Random source (B, 3, H, W) in [-1, 1], pose map (B, 3, H, W) in [0, 1] and keypoints (B, 18, 2)
    of source and target inside the image, the same for every row."""
    g = torch.Generator().manual_seed(seed)
    s = gen.image_size
    source = torch.rand(batch, 3, s, s, generator=g) * 2 - 1  # (B, 3, H, W)
    pose = torch.rand(batch, 3, s, s, generator=g)  # (B, 3, H, W)
    keypoints = tuple((torch.rand(batch, 18, 2, generator=g) * (s - 1)).to(device) for _ in range(2))  # (B, 18, 2) x2
    return source.to(device), pose.to(device), keypoints


def benchmark(cfg: SampleConfig, device):
    gens = {}
    for method in pipeline.LATENT_METHODS:
        torch.manual_seed(cfg.seed)
        gens[method] = Generator.random_init(method, cfg.preset, device)
        maybe_compile(gens[method], cfg, device)
    source, pose, keypoints = benchmark_inputs(gens["fpdm"], cfg.batch_size, cfg.seed, device)
    rows = [(label, gens[m], Sampling(steps, sampler, w, w)) for label, m, sampler, steps, w in BENCHMARK_ROWS]
    for _, gen, sampling in rows:
        for _ in range(cfg.warmup):
            generate(gen, source, pose, sampling, PhaseTimer(device), cfg.precision, keypoints=keypoints)
    timers, nfes = [PhaseTimer(device) for _ in rows], [0.0] * len(rows)
    # note: rows take turns within each repeat, so a slower or busier moment of a shared machine
    # falls on every row alike instead of on whichever row happened to run then
    for _ in cli.progress(range(cfg.repeats), desc="[benchmark] repeats"):
        for i, (_, gen, sampling) in enumerate(rows):
            _, nfes[i] = generate(gen, source, pose, sampling, timers[i], cfg.precision, keypoints=keypoints)
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

def load_source(path: str, size: int, device) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--source {p} does not exist")
    return streaming.source_tensor(streaming.read_image(p.read_bytes(), f"--source {p}"), size, device)  # (1, 3, H, W)


@torch.inference_mode()
def stream(cfg: SampleConfig, device):
    """One source, a pose per frame, a frame per pose: the live use (sign language, AR/VR, streaming).

    streaming.Live holds what stays fixed (the source encoded once, ONE noise for every frame) and times
    each frame from keypoints to image (pose drawing, sampling loop, VAE decoding). After the stream the
    first pose is drawn once more: with one fixed noise its frame must come back unchanged.
    """
    gen = Generator.from_checkpoint(find_checkpoint(cfg), cfg.ema, device)
    sampling = sampling_from_flags(gen, cfg)
    maybe_compile(gen, cfg, device)
    frame_hw = cli.parse_size(cfg.pose_frame, "--pose-frame")
    sequence = streaming.read_pose_csv(cfg.poses, frame_hw)
    source = load_source(cfg.source, gen.image_size, device)
    t0 = time.perf_counter()
    live = streaming.Live.start(gen, source, frame_hw, sampling, cfg.precision, cfg.seed)
    sync(device)
    encode_s = time.perf_counter() - t0  # the source tokens, once for the whole stream
    played = streaming.play(live, sequence.frames, cfg.warmup)
    images, poses, latencies = played["images"], played["poses"], played["seconds"]
    change = streaming.repeat_change(images + [played["again"]], sequence.frames + sequence.frames[:1])
    change["output_change"] = streaming.consecutive_change(images)
    fps = cfg.fps or sequence.fps or DEFAULT_GIF_FPS
    write_gif(images, poses, fps, cfg, gen)
    report_stream(latencies, encode_s, played["nfe"], gen, sampling, device, change)


DEFAULT_GIF_FPS = 10.0  # without --fps and without a `# fps=N` line in the CSV


def write_gif(images, poses, fps: float, cfg: SampleConfig, gen: Generator):
    """stream.gif: each frame is generated | pose map, side by side, at `fps` frames per second."""
    out = Path(cfg.out or Path(cfg.runs) / "samples" / f"{gen.method}_stream")
    out.mkdir(parents=True, exist_ok=True)
    frames = [data.tensor_to_pil(torch.cat([img, pose * 2 - 1], 2)) for img, pose in zip(images, poses)]  # (3, H, 2W)
    frames[0].save(out / "stream.gif", save_all=True, append_images=frames[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    print(f"[stream] wrote {len(frames)} frames (generated | pose) at {fps:g} frames/s to {out / 'stream.gif'}")


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
    print(f"[stream] flicker: a repeated pose changes the output by {change['repeat_change']:.4f} mean abs "
          f"(0-1 scale; 0 expected with one fixed noise), worst {change['repeat_change_max']:.4f} at frame "
          f"{change['repeat_worst_frame']} of {change['repeat_pairs']} repeats; consecutive frames change by "
          f"{change['output_change']:.4f} (motion and flicker together; no ground-truth video to compare with)")
    print(json.dumps(row))


# ----------------------------------------------------------------------------------------------
# 4. A test video (sign language): a whole sequence from its first frame, beside the ground truth
# ----------------------------------------------------------------------------------------------

SIGN_FPS = 25.0  # PHOENIX-2014T and the DGS sentences are filmed at 25 frames per second


def video_specs(cfg: SampleConfig) -> list[tuple[str, int]]:
    """--ckpt PATH[@STEPS],... -> [(path, steps)]; no @STEPS: --steps (0: the process's default).
    Without --ckpt: the newest finished checkpoint of `train.py --data sign`, in <runs>/<preset>-sign/."""
    if not cfg.ckpt:
        cfg = dataclasses.replace(cfg, ckpt=find_checkpoint(dataclasses.replace(cfg, preset=cfg.preset + "-sign")))
    specs = []
    for part in cfg.ckpt.split(","):
        path, _, steps = part.strip().partition("@")
        if steps and not (steps.isdigit() and int(steps) > 0):
            raise ValueError(f"--ckpt {part.strip()!r}: expected PATH or PATH@STEPS, STEPS a whole number above 0")
        specs.append((path, int(steps) if steps else cfg.steps))
    return specs


def pick_video(dataset, name: str) -> tuple[str, list]:
    """(video name, its frame names in order) of a dataset of videos (the phoenix layout)."""
    if not dataset.videos:
        raise ValueError(f"--video needs a dataset of videos (the phoenix layout: train with --data sign, or "
                         f"pass --data PHOENIX_ROOT); {dataset.root} holds photos")
    name = next(iter(dataset.videos)) if name == "first" else name
    if name not in dataset.videos:
        raise ValueError(f"--video {name!r}: no such {dataset.split} video in {dataset.root} (e.g. "
                         f"{', '.join(list(dataset.videos)[:3])})")
    return name, dataset.videos[name]


def real_video(dataset, names, size) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1]: the ground-truth frames read from their files at the photos' size, as
    evaluate.py reads them (not the training-size copies the model saw, which would flatter it)."""
    return torch.stack([scoring.load_image(dataset.image_path(n), size) for n in names])


@torch.inference_mode()
def play_video(path: str, steps: int, cfg: SampleConfig, device) -> dict:
    """One checkpoint's video: batch 1, one frame per target pose, the first frame as the source."""
    gen = Generator.from_checkpoint(path, cfg.ema, device)
    sampling = sampling_from_flags(gen, dataclasses.replace(cfg, steps=steps))
    maybe_compile(gen, cfg, device)
    dataset = data.PairDataset(cfg.data or gen.dataset_root(), cfg.split, gen.image_size, verbose=False)
    name, frames = pick_video(dataset, cfg.video)
    frames = frames[:cfg.limit] if cfg.limit else frames
    keyframes = [dataset.keypoints[n] for n in frames]  # (50, 2) each, in dataset.frame
    live = streaming.Live.start(gen, dataset.load_image(frames[0])[None].to(device), dataset.frame, sampling,
                                cfg.precision, cfg.seed, source_keypoints=keyframes[0])
    label = f"{gen.method} {sampling.sampler} {sampling.steps}"
    played = streaming.play(live, keyframes, cfg.warmup, desc=f"[video] {label}")
    size = photo_size(dataset)
    fake = (data.resize_for_eval(torch.stack(played["images"]), size) + 1) / 2  # (T, 3, H, W) in [0, 1]
    real = real_video(dataset, frames, size)  # (T, 3, H, W)
    hand_kp = [poses.scale_keypoints(k, dataset.frame, size) for k in keyframes]
    hands = metrics.hand_ssim(fake, real, hand_kp)[0]
    ms = 1000 * np.asarray(played["seconds"])
    row = {"label": label, "method": gen.method, "checkpoint": path, **dataclasses.asdict(sampling), "video": name,
           "frames": len(frames), "ms_per_frame": float(ms.mean()), "frames_per_s": float(1000 / ms.mean()),
           "nfe": played["nfe"], "ssim": float(metrics.ssim(fake, real).mean()),
           "hand_ssim": float(hands.mean()) if len(hands) else None, "hand_crops": len(hands),
           **metrics.temporal_error(fake, real), "device": device_name(device)}
    row["repeat_change"] = streaming.repeat_change([played["images"][0], played["again"]],
                                                   keyframes[:1] * 2)["repeat_change"]
    return {"row": row, "video": fake, "real": real, "poses": played["poses"], "size": size}


def video(cfg: SampleConfig, device):
    """Every --ckpt on one test video; a GIF and a PNG strip side by side with the ground truth."""
    runs = [play_video(path, steps, cfg, device) for path, steps in video_specs(cfg)]
    rows = [r["row"] for r in runs]
    out = Path(cfg.out or Path(cfg.runs) / "samples" / f"video_{rows[0]['video']}")
    out.mkdir(parents=True, exist_ok=True)
    write_video(runs, out, cfg.fps or SIGN_FPS)
    print(f"[video] {rows[0]['video']}: {rows[0]['frames']} frames at batch 1 (pose drawing, sampling loop and VAE "
          f"decoding per frame), scored against the real video at {runs[0]['size'][0]}x{runs[0]['size'][1]}")
    print(f"{'':24s} | ms/frame | frames/s | NFE |   SSIM | Hand SSIM | temporal (worst) | repeat | device")
    for r in rows:
        hand = "-" if r["hand_ssim"] is None else f"{r['hand_ssim']:.4f}"
        print(f"{r['label']:24s} | {r['ms_per_frame']:8.1f} | {r['frames_per_s']:8.2f} | {r['nfe']:3.0f} | "
              f"{r['ssim']:.4f} | {hand:>9s} | {r['mean']:.4f} ({r['worst']:.4f}) | {r['repeat_change']:.4f} | "
              f"{r['device']}")
    print(f"temporal: mean abs gap between the generated and the real frame-to-frame change (0-1 scale); a frozen "
          f"video scores {rows[0]['real_change']:.4f} here. repeat: output change when the first pose is drawn again "
          f"(0 with one fixed noise)")
    (out / "video.json").write_text(json.dumps(rows, indent=1))
    for r in rows:
        print(json.dumps(r))


def write_video(runs: list, out: Path, fps: float):
    """video.gif (pose | ground truth | each method, labelled) and video.png (every 10th frame, one a row)."""
    labels = ["pose", "ground truth"] + [r["row"]["label"] for r in runs]
    size = runs[0]["size"]
    poses_ = [data.resize_for_eval(p[None], size)[0] for p in runs[0]["poses"]]  # (3, H, W) in [0, 1]
    columns = [poses_, list(runs[0]["real"])] + [list(r["video"]) for r in runs]
    frames = [data.grid_image([[c[t] for c in columns]], labels, value_range=(0.0, 1.0))
              for t in range(len(columns[0]))]
    frames[0].save(out / "video.gif", save_all=True, append_images=frames[1:], duration=max(1, round(1000 / fps)),
                   loop=0)
    rows = [[c[t] for c in columns] for t in range(0, len(columns[0]), 10)]
    data.save_grid(rows, out / "video.png", labels=labels, value_range=(0.0, 1.0))
    print(f"[video] wrote {out / 'video.gif'} ({len(frames)} frames at {fps:g} frames/s: {' | '.join(labels)}) "
          f"and {out / 'video.png'} (every 10th frame, one a row)")


# ----------------------------------------------------------------------------------------------

def parse_config(argv=None) -> SampleConfig:
    cfg, given = cli.parse_config(SampleConfig, argv, __doc__.splitlines()[0])
    if cfg.benchmark and given & set(SAMPLING_FLAGS):
        flags = ", ".join("--" + f.replace("_", "-") for f in SAMPLING_FLAGS if f in given)
        raise ValueError(f"--benchmark times fixed settings (FPDM DDPM 20, DDIM 50, DDIM 10; RPFM "
                         f"Euler 10; w = {BENCHMARK_W:g}; the reflow student Euler 2 and 1) so that no "
                         f"flag biases it; drop {flags}")
    if bool(cfg.source) != bool(cfg.poses):
        raise ValueError("streaming needs both --source IMG and --poses FILE")
    if cfg.fps is not None:
        streaming.check_fps(cfg.fps, "--fps")
    cli.parse_size(cfg.pose_frame, "--pose-frame")
    return cfg


def run(cfg: SampleConfig):
    device = pipeline.pick_device(cfg.device)
    if device.type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.benchmark:
        benchmark(cfg, device)
    elif cfg.video:
        video(cfg, device)
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
