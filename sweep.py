"""Quality against time: every method at every step count, generated, timed and scored in one run.

One command (`python evaluate.py --sweep`) answers "how much faster is RPFM than FPDM at the same
quality": the checkpoints (--rpfm-ckpt, --fpdm-ckpt and, when it exists, --reflow-ckpt; runs/tiny/ by
default) generate their dataset's --split (--limit N: the first N pairs) at every point of
SWEEP_POINTS: RPFM Euler 1-32 steps and Heun 2-8 with guidance w 2, Euler 1-32 without (w 1: one
branch), FPDM's release (DDPM 20, w 2) and DDIM 5-50, the reflow student Euler 1, 2, 4 (guidance
baked in). Each point draws from the same noise and generates exactly as sample.py does
(pipeline.generate: source encoding + sampling loop + VAE decoding, CUDA synchronised, one untimed
warm-up batch, the NFE counted by wrapping the UNet); its images are scored like any folder
(scoring.py: SSIM, PSNR, sharpness, part colour error, LPIPS / FID where the weights exist), and its
source sensitivity measured on --sens-pairs pairs. The time per image is then measured once more,
every point in turn for 7 rounds, so that a slow phase of a shared machine hits all points alike.

The headline compares each method at ITS best: the reference is FPDM's release point; a point
qualifies when its SSIM is within 0.01 of it, its sharpness at least 90 % and its part colour error
at most 110 % of the reference's; for FPDM (its DDIM points included), RPFM and the student the
fastest qualifying point is printed, with the time ratio to FPDM's own fastest qualifying point,
beside the spread between two noise seeds at those points (--spread). --sweep-out (runs/sweep)
receives results.csv, quality_vs_time.png (each method's Pareto frontier on one panel, then SSIM,
sharpness and part colour error against ms per image, baselines and ceiling as lines), grid.png and
images/<point>/.

Test: python -m pytest -q tests/test_sweep.py

Shape letters: B batch, C latent channels, h w latent size, H W image size.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import data
import pipeline
from cli import parse_size, progress
from data import PairDataset
from metrics import Metrics, build_metrics
from pipeline import Generator, Sampling
from scoring import (CEILING_ROW, add_swap_truth, print_table, score_baselines, score_ceiling, score_pairs,
                     score_sensitivity)

DEFAULT_REFLOW_CKPT = "runs/tiny/reflow.pt"  # where `python train.py --method reflow` leaves it


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
                 "ms_per_image_total", "device", "batch", "pairs", "ssim", "psnr", "sharpness", "part_dE",
                 "torso_dE", "torso_rgb", "torso_corr", "src_sens", "lpips", "fid", "checkpoint", "train_step",
                 "precision", "seed")
REACHED = 0.01       # "as good as FPDM's release": an SSIM within this of it ...
SHARP_ENOUGH = 0.9   # ... and at least this fraction of its sharpness (SSIM alone rewards blur) ...
COLOUR_ENOUGH = 1.1  # ... and at most this multiple of its part colour error (the source's look kept)
FALLS_APART = 0.02   # "falls apart": an SSIM this far below RPFM's best guided Euler point


@dataclass
class Sweep:
    """What every point shares: the generators and the pairs at one photo size."""
    gens: dict           # method -> Generator
    dataset: PairDataset
    pairs: list          # [(source name, target name)]: the first --limit pairs of the split
    size: tuple          # (H, W): the photos' size, where every point is scored
    device: torch.device


def sweep_methods(cfg, points) -> tuple[dict, list]:
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


def open_sweep(cfg, paths: dict, device) -> Sweep:
    """Load the checkpoints the points need; they must share one dataset and one image size."""
    gens = {m: Generator.from_checkpoint(p, True, device, method=m) for m, p in paths.items()}  # swapped: error
    roots = {str(Path(cfg.data or g.dataset_root()).resolve()) for g in gens.values()}
    sizes = {g.image_size for g in gens.values()}
    if len(roots) > 1 or len(sizes) > 1:
        raise ValueError(f"--sweep compares checkpoints trained on one dataset at one size; got "
                         f"{', '.join(sorted(roots))} at {sorted(sizes)} px (pass --data ROOT to force one)")
    dataset = PairDataset(roots.pop(), cfg.split, sizes.pop(), verbose=False)
    pairs = list(dataset.pairs[:cfg.limit] if cfg.limit > 0 else dataset.pairs)
    if not pairs:
        raise ValueError(f"--sweep: split {cfg.split!r} of {dataset.root} has no pairs")
    size = parse_size(cfg.size) if cfg.size else pipeline.photo_size(dataset)
    return Sweep(gens, dataset, pairs, size, device)


def point_batches(sweep: Sweep, gen: Generator, cfg):
    """(batch, noise) over the sweep's pairs; the noise and DDPM's step noise are seeded per batch, so
    every point draws from the same noise whatever ran before it."""
    subset = torch.utils.data.Subset(sweep.dataset, range(len(sweep.pairs)))
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, shuffle=False)
    for i, batch in enumerate(loader):
        noise = gen.noise(len(batch["source"]), "cpu", torch.Generator().manual_seed(cfg.seed + i))  # (B, C, h, w)
        torch.manual_seed(cfg.seed + i)  # DDPM's fresh noise per step
        yield batch, noise.to(sweep.device)


def generate_point(sweep: Sweep, method: str, sampling: Sampling, cfg, out: Path):
    """Generate the sweep's pairs at one point into out/, as sample.py does (same timer, same NFE
    counter, same files): (files, ms per image in total, counted NFE per image). The first batch
    runs once untimed before the clock starts (allocator, cuDNN autotuning)."""
    gen, device = sweep.gens[method], sweep.device
    timer, files, nfe = pipeline.PhaseTimer(device), [], 0.0
    out.mkdir(parents=True, exist_ok=True)
    for i, (batch, noise) in enumerate(point_batches(sweep, gen, cfg)):
        src, pose = batch["source"].to(device), batch["target_pose"].to(device)
        kp = pipeline.batch_keypoints(batch, device)
        if i == 0:  # warm-up: its time is thrown away
            pipeline.generate(gen, src, pose, sampling, pipeline.PhaseTimer(device), cfg.precision, noise=noise,
                              keypoints=kp)
            torch.manual_seed(cfg.seed)  # the step noise as if the warm-up had not run
        images, nfe = pipeline.generate(gen, src, pose, sampling, timer, cfg.precision, noise=noise, keypoints=kp)
        files += [out / f for f in pipeline.write_images(images, batch, out, sweep.size)]
    return files, 1000 * sum(timer.seconds.values()) / len(files), nfe


TIMING_ROUNDS = 7  # timed batches per point for ms_per_image, taken in turns across the points


def interleaved_times(sweep: Sweep, points, cfg) -> list[float]:
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
            timer = pipeline.PhaseTimer(device)
            pipeline.generate(sweep.gens[method], batch["source"].to(device), batch["target_pose"].to(device),
                              sampling, timer, cfg.precision, noise=noise,
                              keypoints=pipeline.batch_keypoints(batch, device))
            if round_ > 0:  # round 0 warms every point up again after the long generation pass
                times[i].append(1000 * sum(timer.seconds.values()) / len(noise))
    return [float(np.median(t)) for t in times]


def point_label(method: str, s: Sampling) -> str:
    w = f"{s.w_src:g}" if s.w_src == s.w_fus else f"{s.w_src:g}/{s.w_fus:g}"
    return f"{method} {s.sampler} {s.steps} w{w}"


def sweep_point(sweep: Sweep, method: str, sampling: Sampling, metrics: Metrics, cfg) -> dict:
    """One CSV row: generate, time and score the sweep's pairs at one (method, sampling). Its
    ms_per_image comes later, from `interleaved_times`."""
    label = point_label(method, sampling)
    out = Path(cfg.sweep_out) / "images" / label.replace(" ", "_").replace("/", "-")
    files, ms_total, nfe = generate_point(sweep, method, sampling, cfg, out)
    real = [sweep.dataset.image_path(t) for _, t in sweep.pairs]
    scores = score_pairs(list(zip(files, real)), metrics, sweep.size, cfg.batch_size, desc=label,
                         keypoints=[sweep.dataset.keypoints[t] for _, t in sweep.pairs])
    if cfg.sens_pairs > 0:
        scores.update(score_sensitivity(sweep.gens[method], sweep.dataset, sampling, cfg.sens_pairs,
                                        cfg.precision, sweep.device, cfg.seed))
    return {"method": method, **dataclasses.asdict(sampling), "nfe": nfe,
            "ms_per_image_total": ms_total,
            "device": pipeline.device_name(sweep.device), "batch": cfg.batch_size, "pairs": len(files),
            **{k: scores[k] for k in SCORE_COLUMNS if k in scores},
            "checkpoint": sweep.gens[method].checkpoint, "train_step": sweep.gens[method].step,
            "precision": cfg.precision, "seed": cfg.seed}


SCORE_COLUMNS = ("ssim", "psnr", "sharpness", "part_dE", "torso_dE", "torso_rgb", "torso_corr", "src_sens",
                 "lpips", "fid")


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
    for (name, row), style in zip(baselines.items(), (":", "--", "-.", (0, (5, 1)), "-")):
        if key in row:  # the colour baselines have no SSIM, the copy and mean rows all columns
            ax.axhline(row[key], color="gray" if "ceiling" not in name else "black", linestyle=style, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (log scale; labels: steps)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def plot_sweep(rows: list[dict], baselines: dict, path: Path, title: str = "") -> Path:
    """quality_vs_time.png: each method's Pareto frontier (SSIM against time) on one panel, then
    SSIM, sharpness and part colour error against ms per image for every curve, with the baselines
    and the autoencoder ceiling as horizontal lines."""
    import matplotlib  # lazily: only the sweep draws, and a file needs no display (Agg)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 10.5))
    curves = sweep_curves(rows)
    _plot_frontiers(axes[0, 0], rows, baselines)
    _plot_panel(axes[0, 1], curves, baselines, "ssim", "SSIM (higher is better)")
    _plot_panel(axes[1, 0], curves, baselines, "sharpness", "sharpness (log scale; 1.0: as sharp as the photos)")
    axes[1, 0].set_yscale("log")  # the copy-source baseline (1.0) and the mean image (0.001) frame the models
    if any("part_dE" in r for r in rows):
        _plot_panel(axes[1, 1], curves, baselines, "part_dE", "part colour error, CIELAB ΔE (lower is better)")
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room below the panels for the legend
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_frontiers(ax, rows: list[dict], baselines: dict) -> None:
    """Each method's Pareto frontier: its points that no faster point of the same method beats in SSIM."""
    for method, who in HEADLINE_METHODS:
        frontier = quality_frontier([r for r in rows if r["method"] == method])
        if frontier:
            ax.plot([r["ms_per_image"] for r in frontier], [r["ssim"] for r in frontier], marker="o",
                    drawstyle="steps-post", linewidth=2, label=f"{method.upper()} frontier")
            for r in frontier:
                ax.annotate(f"{r['sampler']} {r['steps']}", (r["ms_per_image"], r["ssim"]), fontsize=7,
                            textcoords="offset points", xytext=(3, -9))
    for (name, row), style in zip(baselines.items(), (":", "--", "-.", "-", "-")):
        if "ssim" in row:
            ax.axhline(row["ssim"], color="gray", linestyle=style, linewidth=1)
            ax.annotate(name, (ax.get_xlim()[0], row["ssim"]), fontsize=7, color="gray", xytext=(2, 2),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (log scale)")
    ax.set_ylabel("SSIM")
    ax.set_title("Pareto frontier of each method", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


@torch.no_grad()
def sweep_grid(sweep: Sweep, points, cfg, path: Path) -> Path:
    """grid.png: source | target pose | one column per point | target, on the first GRID_PAIRS pairs,
    every column drawn from the same noise."""
    items = [sweep.dataset[i] for i in range(min(GRID_PAIRS, len(sweep.pairs)))]
    batch = {k: torch.stack([item[k] for item in items])
             for k in ("source", "target_pose", "target", "source_keypoints", "target_keypoints")}
    src, pose = batch["source"].to(sweep.device), batch["target_pose"].to(sweep.device)
    columns = []
    for method, sampling in points:
        gen = sweep.gens[method]
        torch.manual_seed(cfg.seed)
        noise = gen.noise(len(items), "cpu", torch.Generator().manual_seed(cfg.seed)).to(sweep.device)
        timer = pipeline.PhaseTimer(sweep.device)
        columns.append(pipeline.generate(gen, src, pose, sampling, timer, cfg.precision, noise=noise,
                                         keypoints=pipeline.batch_keypoints(batch, sweep.device))[0].cpu())
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


def qualifies(row: dict, ref: dict) -> bool:
    """As good as the reference point: SSIM within REACHED, at least SHARP_ENOUGH of its sharpness
    (SSIM alone crowns a blurry one-step average) and at most COLOUR_ENOUGH of its part colour error
    (the look kept as well as the pose)."""
    colour_ok = "part_dE" not in ref or row.get("part_dE", math.inf) <= COLOUR_ENOUGH * ref["part_dE"]
    return (row["ssim"] >= ref["ssim"] - REACHED and row["sharpness"] >= SHARP_ENOUGH * ref["sharpness"]
            and colour_ok)


HEADLINE_METHODS = (("fpdm", "FPDM's"), ("rpfm", "RPFM's"), ("reflow", "the reflow student's"))


def release_row(rows: list[dict]) -> dict | None:
    return next((r for r in rows if (r["method"], _sampling_of(r)) == FPDM_RELEASE), None)


def fastest_qualifying(rows: list[dict]) -> dict:
    """{method: its fastest point that qualifies against FPDM's release (FPDM's DDIM points too)}."""
    ref = release_row(rows)
    if ref is None:
        return {}
    best = {}
    for method, _ in HEADLINE_METHODS:
        good = sorted((r for r in rows if r["method"] == method and qualifies(r, ref)), key=lambda r: r["ms_per_image"])
        if good:
            best[method] = good[0]
    return best


def _spread_text(row: dict, spread: dict) -> str:
    other = spread.get(point_label(row["method"], _sampling_of(row)))
    if other is None:
        return ""
    parts = [f"SSIM {abs(row['ssim'] - other['ssim']):.4f} (tolerance {REACHED})",
             f"sharpness {abs(row['sharpness'] / other['sharpness'] - 1):.1%} (tolerance {1 - SHARP_ENOUGH:.0%})"]
    if "part_dE" in row and "part_dE" in other:
        parts.append(f"part ΔE {abs(row['part_dE'] / other['part_dE'] - 1):.1%} (tolerance {COLOUR_ENOUGH - 1:.0%})")
    return f"; seed-to-seed spread: {', '.join(parts)}"


def headline(rows: list[dict], spread: dict | None = None) -> list[str]:
    """The reference (FPDM's release) and, for each method, its fastest point that qualifies against
    it (`qualifies`), with the time ratio to FPDM's own fastest qualifying point, which may be a DDIM
    point faster than the release: each method is compared at its best, never at a default.
    spread: {point label: row} from a second noise seed, printed beside each tolerance."""
    ref, spread = release_row(rows), spread or {}
    if ref is None:
        return ["HEADLINE: no FPDM release point (DDPM 20, w 2) in this sweep", *falls_apart(rows)]
    colour = f", part ΔE {ref['part_dE']:.2f}" if "part_dE" in ref else ""
    lines = [f"HEADLINE: reference FPDM release ({point_label(*FPDM_RELEASE)}): SSIM {ref['ssim']:.4f}, sharpness "
             f"{ref['sharpness']:.3f}{colour} at {ref['ms_per_image']:.2f} ms/image{_spread_text(ref, spread)}",
             f"HEADLINE: qualifying = SSIM within {REACHED}, sharpness >= {SHARP_ENOUGH:.0%} and part colour error "
             f"<= {COLOUR_ENOUGH:.0%} of the reference's"]
    best = fastest_qualifying(rows)
    fpdm = best.get("fpdm", ref)
    for method, who in HEADLINE_METHODS:
        if not any(r["method"] == method for r in rows):
            continue
        if method not in best:
            top = max((r for r in rows if r["method"] == method), key=lambda r: r["ssim"])
            lines.append(f"HEADLINE: {who} fastest qualifying point: none (its best SSIM: "
                         f"{point_label(top['method'], _sampling_of(top))}, {top['ssim']:.4f}, sharpness "
                         f"{top['sharpness']:.3f})")
            continue
        r = best[method]
        ratio = "" if method == "fpdm" else (
            f", {fpdm['ms_per_image'] / r['ms_per_image']:.1f}x less time than FPDM's fastest qualifying "
            f"point (NFE ratio {fpdm['nfe'] / r['nfe']:.1f}x)")
        colour = f", part ΔE {r['part_dE']:.2f}" if "part_dE" in r else ""
        lines.append(f"HEADLINE: {who} fastest qualifying point: {point_label(r['method'], _sampling_of(r))} (NFE "
                     f"{r['nfe']:g}): SSIM {r['ssim']:.4f}, sharpness {r['sharpness']:.3f}{colour} at "
                     f"{r['ms_per_image']:.2f} ms/image{ratio}{_spread_text(r, spread)}")
    return lines + falls_apart(rows)


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


def run_sweep(cfg, points=None, grid_points=None) -> dict:
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
    baselines = {**score_baselines(sweep.dataset.root, metrics, cfg.split, sweep.size, cfg.batch_size,
                                   mean_images=cfg.mean_images, pairs=sweep.pairs),
                 **sweep_ceilings(sweep, metrics, cfg)}
    spread = seed_spread(sweep, rows, metrics, cfg) if cfg.spread else {}
    paths = [write_sweep_csv(rows + list(spread.values()), out / "results.csv"),
             plot_sweep(rows, baselines, out / "quality_vs_time.png",
                        f"{len(sweep.pairs)} {cfg.split} pairs at {sweep.size[0]}x{sweep.size[1]}, batch "
                        f"{cfg.batch_size}, {rows[0]['device']}"),
             sweep_grid(sweep, grid_points, cfg, out / "grid.png")]
    summary = ["quality/time frontier (no faster point has a higher SSIM):", "", *frontier_table(rows), "",
               *headline(rows, spread)]
    print("\n".join(summary))
    print(f"baselines and the autoencoder ceiling on the same {len(sweep.pairs)} pairs, at "
          f"{sweep.size[0]}x{sweep.size[1]}:")
    print_table(baselines)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return {"rows": rows, "baselines": baselines, "summary": summary, "spread": spread}


def sweep_ceilings(sweep: Sweep, metrics: Metrics, cfg) -> dict:
    """The ceiling row of each distinct VAE among the sweep's checkpoints (one when they share it)."""
    rows, scored = {}, []
    for method, gen in sweep.gens.items():
        if any(same_weights(gen.vae, vae) for vae in scored):  # the main job's methods share one VAE
            continue
        scored.append(gen.vae)
        name = CEILING_ROW if not rows else f"{CEILING_ROW} ({method})"
        rows[name] = score_ceiling(gen.vae, sweep.dataset, sweep.pairs, metrics, sweep.size, cfg.batch_size,
                                   sweep.device)
        if name == CEILING_ROW:
            add_swap_truth(rows, gen.vae, sweep.dataset, cfg.sens_pairs, sweep.device)
    return rows


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def seed_spread(sweep: Sweep, rows: list[dict], metrics: Metrics, cfg) -> dict:
    """{point label: its row from the noise seed --seed + 1}, for the headline's points (the reference
    and each method's fastest qualifying point): the spread that each tolerance is printed beside."""
    ref = release_row(rows)
    chosen = ([ref] if ref is not None else []) + list(fastest_qualifying(rows).values())
    again = dataclasses.replace(cfg, seed=cfg.seed + 1, sens_pairs=0,
                                sweep_out=str(Path(cfg.sweep_out) / f"seed{cfg.seed + 1}"))
    spread = {}
    for r in chosen:
        label = point_label(r["method"], _sampling_of(r))
        if label not in spread:
            spread[label] = {**sweep_point(sweep, r["method"], _sampling_of(r), metrics, again),
                             "ms_per_image": r["ms_per_image"]}
    return spread
