"""The one scoring command: what sample.py wrote (or any folder), the baselines, the sweep, diagnostics.

    python evaluate.py            # the newest folder `python sample.py` wrote, with its baselines
    python evaluate.py --generated runs/samples/rpfm --real DATA/test_highres [--data DATA --baselines]
    python evaluate.py --baselines --data DATA [--split test]
    python evaluate.py --sweep [--limit 64] [--batch-size 16] [--device cuda]   # -> runs/sweep/
    python evaluate.py --one-step runs/tiny/fpdm.pt [--no-ema] [--limit 256]
    python evaluate.py --fusion-ckpt runs/tiny/fusion.pt --data runs/benchmark-64x44   # retrieval
    pytest -q tests/test_evaluate.py tests/test_sweep.py

Every table has both halves of the task: structure (SSIM, PSNR, sharpness; LPIPS and FID where
their weight files exist: metrics.py lists them, nothing downloads) and appearance (part colour
error, torso colour correlation, source sensitivity: appearance.py), beside the baselines and the
autoencoder ceiling scored on the same pairs (scoring.py). The evaluation size is the real photos'
own (64x44 for the built-in benchmark) unless --size says otherwise, and every table says it.

Without flags it scores the newest sample.py folder: its samples.json names the checkpoint, the
pairs and the sampling, so the source sensitivity (--sens-pairs pairs generated again with swapped
sources) and the ceiling (the checkpoint's VAE) are measured too; on the built-in benchmark also the
source sensitivity of the truth and of the ceiling (scoring.drawn_swap). --sweep is sweep.py's experiment.

One-step denoising (--one-step CKPT), a diagnostic: noise the split's target latents to several
levels, predict them back with ONE network call (no sampler), decode and score against the targets;
plus, for FPDM, the prediction from what its sampler really starts from (pure noise at step 951),
and the size of the fusion term next to the time term in the UNet's embedding. It tells whether a
model that samples badly is bad at some noise levels, or good everywhere and let down by sampling.

Shape letters: B batch, C channels, H W height width, h w latent size.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

import data
import diffusion
import fusion
import pipeline
import poses
from cli import option, parse_config, parse_size, progress
from data import FRAME, PairDataset
from guidance import guided_output
from metrics import Metrics, build_metrics, frechet_distance, psnr, ssim  # noqa: F401 (DESIGN's public names)
from pipeline import Generator, Sampling
from scoring import (CEILING_ROW, NAME_SEPARATOR, RETRIEVAL_COLUMNS, RETRIEVAL_FOOTER, add_swap_truth, match_files,
                     print_table, reference_stats, score_baselines, score_ceiling, score_pairs, score_sensitivity,
                     videos_of)
from sweep import DEFAULT_REFLOW_CKPT, run_sweep
from unet import timestep_embedding

# ----------------------------------------------------------------------------- configuration

@dataclass
class EvalConfig:
    """Every flag of the CLI (one field, one flag). With none: the newest folder sample.py wrote."""
    generated: Optional[str] = option(None, "folder of generated images (empty: the newest sample.py "
                                            "folder under --runs, with its pairs and baselines)")
    real: Optional[str] = option(None, "folder of ground-truth images")
    runs: str = option("runs", "where sample.py wrote <runs>/samples/<method>/ (used without --generated)")
    size: str = option("", "evaluation size HxW (256x176, 512x352); empty: the real photos' own size")
    out: str = option("", "JSON file written; empty: <runs>/evaluate.json")
    batch_size: int = option(16, "images per batch")
    device: str = option("auto", "cpu, cuda, ...; auto picks cuda if present")
    lpips_net: str = option("alex", "LPIPS backbone", choices=["alex", "vgg"])
    lpips_weights: Optional[str] = option(None, "LPIPS heads (lpips format)")
    lpips_backbone: Optional[str] = option(None, "torchvision AlexNet/VGG16 file")
    fid_weights: Optional[str] = option(None, "InceptionV3 file: torchvision's or pytorch-fid's "
                                              "pt_inception-2015-12-05")
    fid_ref: Optional[str] = option(None, "folder (e.g. the train set) or .npz with mu, sigma: also "
                                          "report FID against it")
    baselines: bool = option(False, "add the copy-source / mean-image rows, on the generated rows' "
                                    "pairs (always on for a sample.py folder found without flags)")
    data: Optional[str] = option(None, "dataset root for --baselines")
    split: str = option("test", "split scored by --baselines")
    mean_images: int = option(0, "train images in the mean image (0 = all)")
    max_pairs: int = option(0, "score only the first N pairs (0 = all): a quick look, not a paper number")
    fusion_ckpt: Optional[str] = option(None, "a fusion .pt from train.py: the retrieval table (R@k, "
                                              "average rank) on --data's --split")
    random_init_for_testing: bool = option(False, "LPIPS/FID from untrained random networks: exercises "
                                                   "the code, numbers are meaningless")
    sweep: bool = option(False, "quality against time: generate --split with both checkpoints at every "
                                "point of SWEEP_POINTS, time and score each (CSV, plot, grid in --sweep-out)")
    rpfm_ckpt: str = option("runs/tiny/rpfm.pt", "--sweep: the RPFM checkpoint")
    fpdm_ckpt: str = option("runs/tiny/fpdm.pt", "--sweep: the FPDM checkpoint (trained on the same data)")
    reflow_ckpt: str = option(DEFAULT_REFLOW_CKPT, "--sweep: RPFM's reflow student (its points are left "
                                                   "out when this default file is missing)")
    sweep_out: str = option("runs/sweep", "--sweep: folder of results.csv, quality_vs_time.png, grid.png")
    limit: int = option(0, "--sweep: generate only the first N pairs (0: the whole split)")
    sens_pairs: int = option(64, "pairs generated twice (own and swapped source) for the source sensitivity "
                                 "column (the table's generated row, every sweep point); 0: leave it out")
    spread: bool = option(True, "--sweep: generate the headline's points again from --seed + 1, so each "
                                "tolerance is printed beside the seed-to-seed spread")
    seed: int = option(0, "--sweep: seed of the initial noise, the same at every point")
    precision: str = option("auto", "--sweep: auto (bf16 autocast on CUDA, float32 elsewhere), bf16 or "
                                    "fp32", choices=pipeline.PRECISIONS)
    one_step: Optional[str] = option(None, "a fpdm / rpfm checkpoint: noise --split's target latents to "
                                           "several levels and predict them back in ONE network call "
                                           "(a diagnostic: where along the path is the model good?)")
    ema: bool = option(True, "--one-step: the EMA weights (--no-ema: the raw ones)")


# ----------------------------------------------------------------------------- one-step denoising (a diagnostic)

# how far toward noise (0 clean, 1 the noisiest input the process trains on); sampling starts at 1
ONE_STEP_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
ONE_STEP_W = (1.0, 2.0)  # without guidance, and with both papers' release weight


def level_name(process, level: float) -> str:
    if isinstance(process, diffusion.Diffusion):
        return f"level {level:.2f} (step {process.step_at(level)})"
    return f"level {level:.2f} (flow t {1 - level:.2f})"


def sampler_start(gen: Generator, latents, noise, cond, w: float) -> torch.Tensor:
    """x0 predicted from what DDPM/DDIM really feed first: pure noise at step timesteps()[0].

    note: the training input at that step still holds sqrt(alpha_bar) of the data (0.09 at step 951
    of SD's schedule); pure noise holds none. A model that leans on that remnant fails only here.
    """
    t = torch.full((latents.shape[0],), float(gen.process.timesteps(diffusion.DEFAULT_STEPS)[0]))  # (B,)
    out = guided_output(gen.unet, noise, t, cond, w, w)
    return gen.process.predict_x0_eps(out, noise, t)[0]


@torch.no_grad()
def one_step_batch(gen: Generator, batch: dict, seed: int) -> dict:
    """{row: {metric: (B,) values}} for one batch: SSIM of the decoded one-call prediction against the
    target (no sampler in between) at every level and guidance weight, and the RMS latent error."""
    x = gen.vae.encode_latents(batch["target"])  # (B, C, h, w), unit variance
    cond = pipeline.build_cond(gen.unet, gen.fusion, batch["source"], batch["target_pose"],
                               keypoints=pipeline.batch_keypoints(batch))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))  # (B, C, h, w)
    real = (batch["target"] + 1) / 2  # (B, 3, H, W) in [0, 1]
    predictions = {level_name(gen.process, lv): lambda w, lv=lv: gen.process.denoise_once(
        gen.unet, x, noise, lv, cond, w, w) for lv in ONE_STEP_LEVELS}
    if isinstance(gen.process, diffusion.Diffusion):
        predictions["pure noise at the sampler's first step"] = lambda w: sampler_start(gen, x, noise, cond, w)
    predictions["baseline: predict the zero latent"] = lambda w: torch.zeros_like(x)
    rows = {}
    for name, predict in predictions.items():
        row = {}
        for w in ONE_STEP_W:
            x_hat = predict(w)  # (B, C, h, w)
            image = (gen.vae.decode_latents(x_hat).clamp(-1, 1) + 1) / 2  # (B, 3, H, W)
            row[f"ssim_w{w:g}"] = ssim(image, real)
            row[f"rmse_w{w:g}"] = (x_hat - x).pow(2).flatten(1).mean(1).sqrt()  # (B,)
        rows[name] = row
    return rows


def embedding_norms(gen: Generator, fusion_embedding) -> dict:
    """RMS of what the time and the fusion embedding add to the UNet's embedding (their sum feeds
    every ResBlock): a fusion term far larger or smaller than the time term would drown or vanish."""
    t = torch.linspace(0, 1000, 64)  # (64,)
    rms = lambda e: e.pow(2).mean(1).sqrt().mean().item()  # noqa: E731
    norms = {"time": rms(gen.unet.time_mlp(timestep_embedding(t, gen.unet.config.model_channels)))}
    if gen.unet.fusion_mlp is not None:
        norms["fusion"] = rms(gen.unet.fusion_mlp(fusion_embedding))
        norms["fusion (dropped: zeros)"] = rms(gen.unet.fusion_mlp(torch.zeros_like(fusion_embedding)))
    return norms


ONE_STEP_COLUMNS = [("ssim_w1", "SSIM w 1", "{:.4f}"), ("ssim_w2", "SSIM w 2", "{:.4f}"),
                    ("rmse_w1", "latent RMSE w 1", "{:.3f}"), ("rmse_w2", "latent RMSE w 2", "{:.3f}")]


ONE_STEP_FOOTER = ("higher is better: SSIM; lower is better: latent RMSE (unit-variance latents: predicting "
                   "zeros scores about 1)")


@torch.no_grad()
def run_one_step(cfg: EvalConfig) -> dict:
    """--one-step CKPT: the table of one_step_batch over the split (or its first --limit pairs)."""
    gen = Generator.from_checkpoint(cfg.one_step, cfg.ema, "cpu")
    root = cfg.data or gen.dataset_root()
    dataset = PairDataset(root, cfg.split, gen.image_size, verbose=False)
    subset = torch.utils.data.Subset(dataset, range(min(cfg.limit or len(dataset), len(dataset))))
    loader = torch.utils.data.DataLoader(subset, batch_size=max(cfg.batch_size, 64), shuffle=False)
    values, fusions = {}, []
    for i, batch in enumerate(progress(loader, desc="[one-step] batches")):
        for name, row in one_step_batch(gen, batch, cfg.seed + i).items():
            for key, v in row.items():
                values.setdefault(name, {}).setdefault(key, []).append(v)
        if gen.fusion is not None:
            fusions.append(gen.fusion.embed(batch["source"], batch["target_pose"]))  # (B, F)
    rows = {name: {k: torch.cat(v).mean().item() for k, v in row.items()} for name, row in values.items()}
    weights = "EMA" if cfg.ema else "raw"
    print(f"one-step prediction of the clean latent, {len(subset)} {cfg.split} pairs, {gen.method} "
          f"({gen.checkpoint}, {weights} weights, prediction {getattr(gen.process, 'prediction', 'velocity')}):")
    print_table(rows, ONE_STEP_COLUMNS, footer=ONE_STEP_FOOTER)
    norms = embedding_norms(gen, torch.cat(fusions) if fusions else None)
    print("RMS of the embedding terms the ResBlocks receive: " + ", ".join(f"{k} {v:.3f}" for k, v in norms.items()))
    return write_json({"one_step": rows, "embedding_rms": norms, "config": dataclasses.asdict(cfg)}, cfg)


# ----------------------------------------------------------------------------- table and CLI

# (key in a row, header, format); extend this list (or pass columns=) for new metrics

def score_retrieval(ckpt_path, root, split="test", batch_size=64, device="auto") -> dict:
    """FPDM's Table 2 for a trained fusion stage: rank every pair's true target among all test
    targets by the fused embedding, and by the source embedding alone (the reference row)."""
    model = pipeline.load_fusion(ckpt_path).to(pipeline.pick_device(device)).eval()
    pairs = PairDataset(root, split, model.image_size)  # the encoder's own input size
    loader = torch.utils.data.DataLoader(pairs, batch_size=batch_size, shuffle=False)
    return fusion.evaluate_retrieval(model, loader)


@dataclass
class Plan:
    """What one run scores: generated pairs, and the pairs of the baseline rows, at one size."""
    size: tuple
    generated: list                     # [(generated path, real path)]; [] for baselines alone
    name: str = ""                      # the generated row's name in the table
    data: Optional[str] = None          # dataset root of the baseline rows (None: no baselines)
    split: str = "test"
    baseline_pairs: Optional[list] = None  # [(source name, target name)]; None: the whole split
    keypoints: Optional[list] = None    # the generated row's target keypoints (in `frame`): colour columns
    frame: tuple = FRAME                # the (H, W) frame of those keypoints
    videos: Optional[list] = None       # the video of each generated row's target (signers): temporal error
    checkpoint: str = ""                # the generator behind the row: source sensitivity and the ceiling
    sampling: Optional[dict] = None     # how it sampled (sample.py's record)
    ema: bool = True                    # with the checkpoint's EMA weights (sample.py's default)


def plan_request(cfg: EvalConfig) -> Plan:
    """Fail on a malformed request in a second, before any network loads."""
    if cfg.generated is None and not cfg.baselines:
        return plan_newest_samples(cfg)
    if cfg.generated is not None and cfg.real is None:
        raise ValueError("--generated needs --real (the folder of ground-truth images)")
    if cfg.baselines and cfg.data is None:
        raise ValueError("--baselines needs --data ROOT (the dataset whose test pairs are scored)")
    generated = match_files(cfg.generated, cfg.real) if cfg.generated is not None else []
    generated = generated[:cfg.max_pairs] if cfg.max_pairs > 0 else generated
    size = parse_size(cfg.size) if cfg.size else real_photo_size(generated, cfg)
    baseline_pairs = pairs_named_by([g for g, _ in generated], cfg.data, cfg.split) if (
        cfg.baselines and generated) else None
    keypoints, frame, videos = None, data.FRAME, None
    if baseline_pairs:  # --data names the dataset: its keypoints give the part colour (and hand) columns
        dataset = PairDataset(cfg.data, cfg.split, 64, verbose=False)
        keypoints, frame = [dataset.keypoints[t] for _, t in baseline_pairs], dataset.frame
        videos = videos_of(dataset, [t for _, t in baseline_pairs])
    return Plan(size, generated, Path(cfg.generated).resolve().name if generated else "",
                cfg.data if cfg.baselines else None, cfg.split, baseline_pairs, keypoints, frame=frame, videos=videos)


def real_photo_size(generated: list, cfg: EvalConfig) -> tuple:
    """Without --size: the real photos' own size (the first one's), so the benchmark's 64x44 photos are
    scored at 64x44, not blown up to 256x176 (which raised a sample folder's SSIM from 0.35 to 0.62)."""
    first = generated[0][1] if generated else None
    if first is None and cfg.data is not None:
        dataset = PairDataset(cfg.data, cfg.split, 64, verbose=False)
        first = dataset.image_path(dataset.pairs[0][1])
    if first is None:
        return (256, 176)
    with Image.open(first) as im:
        w, h = im.size
    return (h, round(h * data.FRAME[1] / data.FRAME[0])) if w == h else (h, w)


def plan_newest_samples(cfg: EvalConfig) -> Plan:
    """No flags: the newest folder sample.py wrote, its pairs (samples.json), and the baselines on them."""
    found = pipeline.newest_sample_record(cfg.runs)
    if found is None:
        raise FileNotFoundError(f"no sample folder in {Path(cfg.runs) / 'samples'}/: run `python sample.py` "
                                f"first (or pass --generated DIR --real DIR)")
    folder, record = found
    dataset = PairDataset(record["data_root"], record["split"], record["image_size"], verbose=False)
    rows = record["pairs"][:cfg.max_pairs] if cfg.max_pairs > 0 else record["pairs"]
    generated = [(folder / file, dataset.image_path(target)) for _, target, file in rows]
    missing = [g.name for g, _ in generated if not g.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {folder / pipeline.SAMPLE_RECORD} are "
                                f"missing (e.g. {missing[0]}); rerun `python sample.py`")
    print(f"evaluate.py: scoring {folder}/ ({len(rows)} {record['split']} pairs of {record['data_root']}, "
          f"from {record['checkpoint']}); --generated DIR --real DIR scores another folder")
    size = parse_size(cfg.size) if cfg.size else tuple(record["photo_size"])
    targets = [target for _, target, _ in rows]
    return Plan(size, generated, folder.name, record["data_root"], record["split"],
                [(source, target) for source, target, _ in rows],
                [dataset.keypoints[t] for t in targets], checkpoint=record["checkpoint"], sampling=record["sampling"],
                ema=record.get("ema", True), frame=dataset.frame, videos=videos_of(dataset, targets))


def pairs_named_by(files, root, split: str) -> list[tuple[str, str]]:
    """The split's (source, target) pairs that generated files `{source}___{target}.png` name, in order.

    note: the baselines must be scored on the generated row's pairs: over the whole split they
    would answer another question (a 64-pair run beside 822-pair baselines).
    """
    dataset = PairDataset(root, split, 256, verbose=False)
    by_stems = {(Path(s).stem, Path(t).stem): (s, t) for s, t in dataset.pairs}
    keys = [tuple(Path(f).stem.rsplit(NAME_SEPARATOR, 1)) for f in files]
    missing = [Path(f).name for f, key in zip(files, keys) if key not in by_stems]
    if missing:
        raise ValueError(f"--baselines: {len(missing)} of {len(files)} generated files name no {split} pair "
                         f"of {root} (e.g. {', '.join(missing[:3])}), so the baselines could not be scored "
                         f"on the same pairs; name them '{{source}}{NAME_SEPARATOR}{{target}}.png'")
    return [by_stems[key] for key in keys]


# FPDM's Table 4 also reports Hand PE, the distance between hand keypoints detected in the generated
# and the real frames. That needs a hand-keypoint detector, and the user's stack has none.
HAND_PE_NOTE = ("Hand PE left out: it needs a hand-keypoint detector (FPDM runs OpenPose's hand model), and "
                "the stack has none (torchvision's Keypoint R-CNN finds 17 body joints, no fingers)")


def score_plan(plan: Plan, cfg: EvalConfig, metrics: Metrics, ref_stats) -> dict:
    """{row name: metrics}: the generated row, then the baselines on the same pairs."""
    rows = {}
    if plan.keypoints and len(plan.keypoints[0]) == len(poses.SIGN50.joint_names):
        metrics.note(HAND_PE_NOTE)
    if plan.generated:
        rows[plan.name] = score_pairs(plan.generated, metrics, plan.size, cfg.batch_size, ref_stats=ref_stats,
                                      desc=plan.name, keypoints=plan.keypoints, frame=plan.frame, videos=plan.videos)
    gen = None
    if plan.checkpoint and Path(plan.checkpoint).is_file():
        gen = Generator.from_checkpoint(plan.checkpoint, plan.ema, metrics.device)
        dataset = PairDataset(plan.data, plan.split, gen.image_size, verbose=False)
        if cfg.sens_pairs > 0 and plan.sampling is not None:
            rows[plan.name].update(score_sensitivity(gen, dataset, Sampling(**plan.sampling), cfg.sens_pairs,
                                                     device=metrics.device))
    if plan.data is not None:
        rows.update(score_baselines(plan.data, metrics, plan.split, plan.size, cfg.batch_size, ref_stats,
                                    cfg.mean_images, cfg.max_pairs, plan.baseline_pairs))
    if gen is not None:
        rows[CEILING_ROW] = score_ceiling(gen.vae, dataset, plan.baseline_pairs, metrics, plan.size,
                                          cfg.batch_size, metrics.device)
        add_swap_truth(rows, gen.vae, dataset, cfg.sens_pairs, metrics.device)
    return rows


def run(cfg: EvalConfig) -> dict:
    """Score what the config names, print notes and the table, write the JSON; returns the JSON dict."""
    if cfg.sweep:
        return run_sweep(cfg)
    if cfg.one_step is not None:
        return run_one_step(cfg)
    if cfg.fusion_ckpt is not None:
        if cfg.data is None:
            raise ValueError("--fusion-ckpt needs --data ROOT (the dataset whose test pairs are ranked)")
        return run_retrieval(cfg)
    plan = plan_request(cfg)
    metrics = build_metrics(cfg)
    for line in metrics.notes:  # what is left out, said before minutes of scoring
        print(f"note: {line}")
    n_said = len(metrics.notes)
    ref_stats = None
    if cfg.fid_ref is not None and metrics.inception is not None:
        ref_stats = reference_stats(cfg.fid_ref, metrics, plan.size, cfg.batch_size)
    rows = score_plan(plan, cfg, metrics, ref_stats)
    for line in metrics.notes[n_said:]:
        print(f"note: {line}")
    print(f"scored at {plan.size[0]}x{plan.size[1]} (HxW; --size changes it):")
    print_table(rows)
    result = {"size": list(plan.size), "rows": rows, "notes": metrics.notes,
              "config": dataclasses.asdict(cfg),
              "lpips_net": cfg.lpips_net if metrics.lpips is not None else None,
              "fid_network": metrics.inception.kind if metrics.inception is not None else None}
    return write_json(result, cfg)


def write_json(result: dict, cfg: EvalConfig) -> dict:
    out = Path(cfg.out or Path(cfg.runs) / "evaluate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def run_retrieval(cfg: EvalConfig) -> dict:
    rows = score_retrieval(cfg.fusion_ckpt, cfg.data, cfg.split, cfg.batch_size, cfg.device)
    print(f"retrieval of the true target among all {cfg.split} targets ({cfg.fusion_ckpt}):")
    print_table(rows, RETRIEVAL_COLUMNS, footer=RETRIEVAL_FOOTER)
    write_json({"retrieval": rows, "config": dataclasses.asdict(cfg)}, cfg)
    return rows


def main(argv=None) -> dict:
    cfg, _ = parse_config(EvalConfig, argv, __doc__.split("\n\n")[0])
    try:
        return run(cfg)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
