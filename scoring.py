"""Scoring generated images against their ground truth: files matched by name, the metrics of
metrics.py and appearance.py over batches, the baselines, the autoencoder ceiling, and the table.

Every scorer returns a plain metrics dict and print_table prints {row name: dict} with the columns in
TABLE_COLUMNS, so further rows or columns (the retrieval metrics of the fusion stage) join the same
table and JSON. Every quality table shows both halves of the task (structure: SSIM, PSNR, sharpness;
appearance: part colour error, source sensitivity) beside the trivial baselines, scored by the same
code on the same pairs:

- "copy the source image" (right person and clothes, wrong pose) and "the mean training image";
- for the colours, "ignore the source" (each part the training targets' mean colour) and "the
  source's own colour" (each part read from the source photo, what a model could copy);
- the ceiling: the VAE's own reconstruction of the targets, what the latent space allows; on the
  built-in benchmark also for the source sensitivity, whose truth (the swapped source's person drawn
  in the target pose) the benchmark can draw (`drawn_swap`).

Files are matched by name, the way sample.py writes them: the generated `{source_stem}___{target_stem}.png`
matches the real image whose stem is `target_stem`; a name without `___` matches by its own stem.
Both sides are resized to the evaluation size with data.resize_for_eval (bicubic, antialiased).

Used by evaluate.py (the command line) and sweep.py. Test: python -m pytest -q tests/test_evaluate.py

Shape letters: B batch, H W height width (the evaluation size), S the training size.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import appearance
import data
import persons
import poses
import pipeline
from cli import progress
from data import PairDataset, resize_for_eval
from deepfashion import item_id
from metrics import (Metrics, TemporalScore, feature_stats, frechet_distance_to_features, hand_ssim,
                     laplacian_variance, psnr, ssim)
from pipeline import Generator, Sampling

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NAME_SEPARATOR = "___"  # sample.py names generated files {source_stem}___{target_stem}.png


# ----------------------------------------------------------------------------- files on disk

def list_images(folder, what: str) -> list[Path]:
    """Sorted image files directly inside folder; a missing or empty folder is a clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def target_stem(file_name: str) -> str:
    """The ground-truth stem a generated file is scored against (sample.py's naming)."""
    stem = Path(file_name).stem
    return stem.rsplit(NAME_SEPARATOR, 1)[1] if NAME_SEPARATOR in stem else stem


def match_files(generated_dir, real_dir) -> list[tuple[Path, Path]]:
    """(generated, real) path pairs. Extra real files are fine (the real folder holds the whole
    test set); a generated file without its ground truth is an error listing a few names."""
    real = {}
    for p in list_images(real_dir, "real"):
        if p.stem in real:
            raise ValueError(f"real folder {real_dir} holds two images with stem {p.stem!r}: "
                             f"{real[p.stem].name} and {p.name}")
        real[p.stem] = p
    generated = list_images(generated_dir, "generated")
    pairs = [(g, real[target_stem(g.name)]) for g in generated if target_stem(g.name) in real]
    if len(pairs) < len(generated):
        missing = [g.name for g in generated if target_stem(g.name) not in real]
        raise ValueError(
            f"{len(missing)} of {len(generated)} generated images have no ground truth in {real_dir} "
            f"(e.g. {', '.join(missing[:3])}); '{{source}}{NAME_SEPARATOR}{{target}}.png' needs a real "
            f"image named '{{target}}.<ext>'")
    return pairs


def load_image(path, size: tuple[int, int]) -> torch.Tensor:
    """An image file as (3, H, W) float in [0, 1] at the evaluation size (bicubic, antialiased).
    note: generated files from sample.py already have the photo's aspect ratio, never square."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H0, W0, 3)
    img = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255  # (3, H0, W0)
    h0, w0 = img.shape[-2:]
    if h0 == w0 and size[0] != size[1]:
        # a square file is a padded copy of the portrait photo (data.py reads it the same way):
        # keep the central person crop instead of squashing the padding into the frame
        keep = round(w0 * size[1] / size[0])
        img = img[:, :, (w0 - keep) // 2:(w0 - keep) // 2 + keep]  # (3, H0, keep)
    if tuple(img.shape[-2:]) != tuple(size):
        # note: bicubic overshoots past [0, 1] near edges; clamp so SSIM/PSNR see valid images
        img = resize_for_eval(img[None], size)[0].clamp(0, 1)  # (3, H, W)
    return img


# ----------------------------------------------------------------------------- scoring

def _batches(pairs, size, batch_size, generated_image=None):
    """Yield (generated (B, 3, H, W), real (B, 3, H, W), real keys) over (gen path, real path) pairs."""
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        real = torch.stack([load_image(r, size) for _, r in chunk])  # (B, 3, H, W)
        if generated_image is None:
            gen = torch.stack([load_image(g, size) for g, _ in chunk])  # (B, 3, H, W)
        else:
            gen = generated_image.expand(len(chunk), -1, -1, -1)  # (B, 3, H, W), one image repeated
        yield gen, real, [str(r) for _, r in chunk]


def _fid_entries(metrics: Metrics, gen_feats, real_keys, ref_stats) -> dict:
    """{'fid': vs the matched real images, 'fid_ref': vs the reference set} where computable."""
    real_feats = torch.stack([metrics.feature_cache[k] for k in real_keys])  # (N_real, 2048)
    if gen_feats.shape[0] < 2 or real_feats.shape[0] < 2:
        metrics.note("FID left out: it needs at least 2 generated and 2 real images")
        return {}
    row = {"fid": frechet_distance_to_features(gen_feats, *feature_stats(real_feats))}
    if ref_stats is not None:
        row["fid_ref"] = frechet_distance_to_features(gen_feats, *ref_stats)
    return row


def _cache_real_features(metrics: Metrics, real: torch.Tensor, keys: list) -> None:
    """Inception features of the real images (B, 3, H, W) not cached yet, once per key (a target
    can repeat within a batch and across rows)."""
    new = {}  # key -> its first index in this batch
    for i, key in enumerate(keys):
        if key not in metrics.feature_cache:
            new.setdefault(key, i)
    if new:
        feats = metrics.features(real[list(new.values())])  # (B_new, 2048)
        metrics.feature_cache.update(zip(new, feats))


@torch.no_grad()
def score_pairs(pairs, metrics: Metrics, size=(256, 176), batch_size=16, generated_image=None,
                ref_stats=None, desc="scoring", keypoints=None, frame=data.FRAME, videos=None) -> dict:
    """Metrics dict of generated images scored against their ground truth.

    pairs: [(generated path or None, real path)]; generated_image (3, H, W) in [0, 1] replaces
    every generated file (the mean-image baseline). Real Inception features are cached by path.
    keypoints: the targets' keypoints in `frame`, one per pair: adds the part colour columns
    (appearance.py), and Hand SSIM for the 50 joints of a signer; None leaves them out.
    videos: the video of each pair's target (frames in pair order): adds the temporal error.
    """
    n_batches = math.ceil(len(pairs) / batch_size)
    batches = progress(_batches(pairs, size, batch_size, generated_image), total=n_batches, desc=desc, leave=False)
    return score_batches(batches, len(pairs), metrics, size, batch_size, keypoints, ref_stats,
                         generated_image, [str(r) for _, r in pairs], frame, videos)


def score_batches(batches, n: int, metrics: Metrics, size, batch_size: int, keypoints=None, ref_stats=None,
                  generated_image=None, real_keys=None, frame=data.FRAME, videos=None) -> dict:
    """The metrics of (generated (B, 3, H, W), real (B, 3, H, W), real keys) batches in [0, 1], in
    pair order (score_pairs reads them from files; the autoencoder ceiling makes them). videos: the
    video of each pair (frames in order) adds the temporal error, in the same pass over the images."""
    per_image = {"ssim": [], "psnr": [], "lpips": [], "sharp_gen": [], "sharp_real": [], "hand_ssim": []}
    gen_feats, colours, temporal, done = [], appearance.PartColourScore(), TemporalScore(), 0
    for gen, real, keys in batches:
        gen, real = gen.to(metrics.device), real.to(metrics.device)
        per_image["ssim"].append(ssim(gen, real).cpu())
        per_image["psnr"].append(psnr(gen, real).cpu())
        per_image["sharp_gen"].append(laplacian_variance(gen).cpu())
        per_image["sharp_real"].append(laplacian_variance(real).cpu())
        if keypoints is not None:
            kp = [poses.scale_keypoints(k, frame, size) for k in keypoints[done:done + len(gen)]]
            colours.add(appearance.part_colours(gen, kp), appearance.part_colours(real, kp))
            if len(kp[0]) == len(poses.SIGN50.joint_names):  # a signer: the hands scored on their own
                per_image["hand_ssim"].append(hand_ssim(gen, real, kp)[0].cpu())
        if videos is not None:  # a frozen output (a copied first frame, one mean image) scores the real motion
            temporal.add_frames(gen.cpu(), real.cpu(), videos[done:done + len(gen)])
        done += len(gen)
        if metrics.lpips is not None:
            per_image["lpips"].append(metrics.lpips(gen, real).cpu())
        if metrics.inception is not None:
            _cache_real_features(metrics, real, keys)
            if generated_image is None:
                gen_feats.append(metrics.features(gen))
    row = {"n_images": n}
    means = {k: float(torch.cat(v).double().mean()) for k, v in per_image.items() if v and torch.cat(v).numel()}
    row.update({k: v for k, v in means.items() if not k.startswith("sharp_")})
    row["sharpness"] = means["sharp_gen"] / max(means["sharp_real"], 1e-12)  # 1.0: as sharp as real
    row.update(colours.result())
    if temporal.steps:
        t = temporal.result()
        row.update({"temporal": t["mean"], "temporal_max": t["worst"], "real_change": t["real_change"]})
    if metrics.inception is not None:
        if generated_image is not None:  # one image: one forward, repeated
            gen_feats = [metrics.features(generated_image[None]).expand(n, -1)]
        unique_real = list(dict.fromkeys(real_keys))
        row.update(_fid_entries(metrics, torch.cat(gen_feats), unique_real, ref_stats))
    return row


def score_folders(generated, real, metrics: Metrics, size=(256, 176), batch_size=16,
                  ref_stats=None, max_pairs: int = 0) -> dict:
    """Match a generated folder to a real folder by name and score it (see score_pairs);
    max_pairs > 0 keeps the first max_pairs matches in name order."""
    pairs = match_files(generated, real)
    pairs = pairs[:max_pairs] if max_pairs > 0 else pairs
    return score_pairs(pairs, metrics, size, batch_size, ref_stats=ref_stats, desc=Path(generated).name)


@torch.no_grad()
def reference_stats(path, metrics: Metrics, size=(256, 176), batch_size=16):
    """(mu, sigma) of a reference set: a folder of images, or an .npz with 'mu' and 'sigma'
    (pytorch-fid's --save-stats format)."""
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"--fid-ref: file not found: {path}")
        with np.load(path) as stats:
            if "mu" not in stats or "sigma" not in stats:
                raise ValueError(f"--fid-ref: {path} needs arrays 'mu' and 'sigma', has {list(stats)}")
            return torch.from_numpy(stats["mu"]).double(), torch.from_numpy(stats["sigma"]).double()
    files = list_images(path, "--fid-ref")
    feats = []
    for i in progress(range(0, len(files), batch_size), desc="fid-ref", leave=False):
        feats.append(metrics.features(torch.stack([load_image(f, size) for f in files[i:i + batch_size]])))
    return feature_stats(torch.cat(feats))  # (D,), (D, D)


# ----------------------------------------------------------------------------- baselines

def training_means(root, size=(256, 176), max_images: int = 0) -> tuple:
    """One pass over the distinct train images at the eval size: their pixel-wise mean (3, H, W) in
    [0, 1] (the 'mean train image' baseline) and each body part's mean Lab and RGB colour (P, 3) each
    (the 'ignore the source' baseline). max_images > 0 uses that many, evenly spaced over the names."""
    train = PairDataset(root, "train", size[0], verbose=False)
    names = sorted({name for pair in train.pairs for name in pair})
    if max_images > 0 and len(names) > max_images:
        names = [names[i] for i in np.linspace(0, len(names) - 1, max_images).round().astype(int)]
    total = torch.zeros(3, *size, dtype=torch.float64)

    def batches():
        nonlocal total
        for images, keypoints in _images_with_keypoints(train, names, size, 64):
            total = total + images.double().sum(dim=0)  # (3, H, W)
            yield images, keypoints

    mean_lab, mean_rgb = appearance.mean_part_colours(
        progress(batches(), total=math.ceil(len(names) / 64), desc="train means", leave=False))
    return (total / len(names)).float(), mean_lab, mean_rgb


def score_baselines(root, metrics: Metrics, split="test", size=(256, 176), batch_size=16,
                    ref_stats=None, mean_images: int = 0, max_pairs: int = 0, pairs=None) -> dict:
    """Rows for the trivial generators, scored against the split's ground-truth targets:
    'copy source' outputs the source photo unchanged (right person and clothes, wrong pose);
    'mean train image' outputs one blurry average person whatever the inputs; the two colour
    baselines (appearance.py) score the part colours only: 'ignore the source' paints every part the
    training targets' mean colour of that part, 'source's own colour' takes it from the source photo.
    pairs: [(source name, target name)] of the split, the pairs a generated row was scored on
    (None: all of the split's pairs); max_pairs > 0 keeps the first max_pairs of them."""
    dataset = PairDataset(root, split, size[0], verbose=False)
    names = list(pairs or dataset.pairs)
    names = names[:max_pairs] if max_pairs > 0 else names
    if not names:
        raise ValueError(f"--baselines: split {split!r} of {root} has no pairs")
    paths = [(dataset.image_path(s), dataset.image_path(t)) for s, t in names]
    targets = {"keypoints": [dataset.keypoints[t] for _, t in names], "frame": dataset.frame,
               "videos": videos_of(dataset, [t for _, t in names])}
    rows = {"baseline: copy source": score_pairs(paths, metrics, size, batch_size, ref_stats=ref_stats,
                                                 desc="copy source", **targets)}
    mean_image, mean_lab, mean_rgb = training_means(root, size, mean_images)
    rows["baseline: mean train image"] = score_pairs(
        [(None, t) for _, t in paths], metrics, size, batch_size, generated_image=mean_image,
        ref_stats=ref_stats, desc="mean image", **targets)
    rows.update(colour_baselines(dataset, names, size, batch_size, mean_lab, mean_rgb))
    return rows


def videos_of(dataset: PairDataset, names) -> list | None:
    """The video each named frame belongs to (phoenix layout), None for a dataset of photos."""
    if not dataset.videos:
        return None
    video = {name: v for v, frames in dataset.videos.items() for name in frames}
    return [video[n] for n in names]


def _images_with_keypoints(dataset: PairDataset, names, size, batch_size: int):
    """(images (B, 3, H, W) in [0, 1] at the eval size, their keypoints in that frame) over names."""
    for i in range(0, len(names), batch_size):
        chunk = names[i:i + batch_size]
        images = torch.stack([load_image(dataset.image_path(n), size) for n in chunk])  # (B, 3, H, W)
        yield images, [poses.scale_keypoints(dataset.keypoints[n], dataset.frame, size) for n in chunk]


def colour_baselines(dataset: PairDataset, names, size, batch_size: int, mean_lab, mean_rgb) -> dict:
    """The part colour error of 'ignore the source' (every part its training mean, (P, 3) Lab and RGB)
    and of 'the source's own colour' on these pairs."""
    ignore, own = appearance.PartColourScore(), appearance.PartColourScore()
    sources = _images_with_keypoints(dataset, [s for s, _ in names], size, batch_size)
    targets = _images_with_keypoints(dataset, [t for _, t in names], size, batch_size)
    for (src, src_kp), (tgt, tgt_kp) in progress(zip(sources, targets), desc="colour baselines", leave=False,
                                                 total=math.ceil(len(names) / batch_size)):
        target = appearance.part_colours(tgt, tgt_kp)
        ignore.add(appearance.fixed_colour_like(target, mean_lab, mean_rgb), target)
        own.add(appearance.part_colours(src, src_kp), target)
    return {"baseline: ignore the source (mean part colour)": {"n_images": len(names), **ignore.result()},
            "baseline: the source's own part colour": {"n_images": len(names), **own.result()}}


@torch.no_grad()
def score_ceiling(vae: nn.Module, dataset: PairDataset, names, metrics: Metrics, size, batch_size: int = 16,
                  device="cpu") -> dict:
    """The autoencoder ceiling: each target photo at the training size, encoded and decoded by the
    VAE, back at the eval size, scored like a model. No model in its latent space can do better
    (up to luck), so every table shows how much of a gap is the VAE's."""
    targets = [t for _, t in names]

    def batches():
        for i in range(0, len(targets), batch_size):
            chunk = targets[i:i + batch_size]
            x = torch.stack([dataset.load_image(t) for t in chunk]).to(device)  # (B, 3, S, S) in [-1, 1]
            recon = vae.decode_latents(vae.encode_latents(x)).float().clamp(-1, 1)  # (B, 3, S, S)
            gen = resize_for_eval((recon.cpu() + 1) / 2, size)  # (B, 3, H, W) in [0, 1]
            real = torch.stack([load_image(dataset.image_path(t), size) for t in chunk])  # (B, 3, H, W)
            yield gen, real, [str(dataset.image_path(t)) for t in chunk]

    return score_batches(progress(batches(), total=math.ceil(len(targets) / batch_size), desc="ceiling",
                                  leave=False), len(targets), metrics, size, batch_size,
                         [dataset.keypoints[t] for t in targets], real_keys=[str(dataset.image_path(t)) for t in targets],
                         frame=dataset.frame, videos=videos_of(dataset, targets))


CEILING_ROW = "ceiling: the VAE's own reconstruction"
SENSITIVITY_PAIRS = 64  # pairs generated twice (own source, swapped source) for the source sensitivity


@torch.no_grad()
def score_sensitivity(gen: Generator, dataset: PairDataset, sampling: Sampling, n: int, precision: str = "fp32",
                      device="cpu", seed: int = 0) -> dict:
    """appearance.source_sensitivity of a generator on the first n pairs (one batch, one fixed noise)."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    source = torch.stack([it["source"] for it in items]).to(device)  # (n, 3, S, S)
    pose = torch.stack([it["target_pose"] for it in items]).to(device)  # (n, P, S, S)
    noise = gen.noise(len(items), "cpu", torch.Generator().manual_seed(seed)).to(device)  # (n, C, h, w)
    source_kp = torch.stack([it["source_keypoints"] for it in items]).to(device)  # (n, K, 2)
    target_kp = torch.stack([it["target_keypoints"] for it in items]).to(device)  # (n, K, 2)

    def generate(src, pose_, src_kp):
        torch.manual_seed(seed)  # DDPM's step noise, the same for both calls
        return pipeline.generate(gen, src, pose_, sampling, pipeline.PhaseTimer(device), precision, noise=noise,
                                 keypoints=(src_kp, target_kp))[0]

    return appearance.source_sensitivity(generate, source, pose, source_kp)


# ----------------------------------------------------------------------------- the swap's truth

TRUTH_ROW = "the truth: the swapped source's person drawn in the pose"


def drawn_swap(dataset: PairDataset, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """What a perfect model draws in score_sensitivity's swap, on the built-in DeepFashion benchmark.

    Pair i's source is swapped for pair swap_order(n)[i]'s; the right answer is pair i's target pose
    in the swapped source's look, drawn as the benchmark drew its photos (persons.draw_person, same
    seed and file format). Returns (sources, targets, swapped truths), each (n, 3, S, S) in [-1, 1]
    at the training size; None for photos or the signer benchmark, whose swapped truth nobody drew.
    """
    meta_file = Path(dataset.root) / "benchmark.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if "annotations" not in meta:  # only the DeepFashion benchmark records its annotations
        return None
    items = [dataset.pairs[i] for i in range(min(n, len(dataset)))]
    order = appearance.swap_order(len(items))

    def drawn(keypoints, item: str) -> torch.Tensor:
        buffer = io.BytesIO()  # through the file format, as the benchmark's own files went
        persons.draw_person(keypoints, persons.sample_appearance(item, meta["seed"]), meta["size"]).save(
            buffer, Image.registered_extensions()[Path(items[0][1]).suffix.lower()], quality=95)
        with Image.open(buffer) as im:
            return dataset.image_tensor(im.convert("RGB"))  # (3, S, S)

    truth = torch.stack([drawn(dataset.keypoints[t], item_id(items[j][0]))
                         for (_, t), j in zip(items, order.tolist())])  # (n, 3, S, S)
    sources = torch.stack([dataset.load_image(s) for s, _ in items])  # (n, 3, S, S)
    targets = torch.stack([dataset.load_image(t) for _, t in items])  # (n, 3, S, S)
    return sources, targets, truth


@torch.no_grad()
def swap_sensitivity(swap: tuple, vae: nn.Module | None = None, device="cpu") -> float:
    """The source sensitivity of drawn_swap's truth (vae None) or of the VAE's reconstruction of it
    (the ceiling): what score_sensitivity's number would be for a perfect model."""
    sources, targets, truth = swap
    if vae is not None:
        targets, truth = (vae.decode_latents(vae.encode_latents(x.to(device))).float().clamp(-1, 1).cpu()
                          for x in (targets, truth))  # (n, 3, S, S) each
    order = appearance.swap_order(sources.shape[0])
    return float((targets - truth).abs().mean() / (sources - sources[order]).abs().mean())


def add_swap_truth(rows: dict, vae: nn.Module, dataset: PairDataset, n: int, device="cpu") -> dict:
    """Give the table's src sens column its ceiling and its truth where the benchmark can draw them:
    rows[CEILING_ROW]['src_sens'] and a TRUTH_ROW. Returns rows."""
    swap = drawn_swap(dataset, n) if n > 0 else None
    if swap is not None:
        rows.setdefault(CEILING_ROW, {})["src_sens"] = swap_sensitivity(swap, vae, device)
        rows[TRUTH_ROW] = {"src_sens": swap_sensitivity(swap)}
    return rows


# ----------------------------------------------------------------------------- the table

TABLE_COLUMNS = [("n_images", "N", "{:d}"), ("ssim", "SSIM", "{:.4f}"), ("psnr", "PSNR", "{:.2f}"),
                 ("sharpness", "sharpness", "{:.3f}"), ("part_dE", "part ΔE", "{:.2f}"),
                 ("torso_dE", "torso ΔE", "{:.2f}"), ("torso_corr", "torso r", "{:.2f}"),
                 ("src_sens", "src sens", "{:.3f}"), ("hand_ssim", "Hand SSIM", "{:.4f}"),
                 ("temporal", "temporal", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"), ("fid", "FID", "{:.2f}"),
                 ("fid_ref", "FID-ref", "{:.2f}")]


RETRIEVAL_COLUMNS = [("R@1", "R@1", "{:.1%}"), ("R@3", "R@3", "{:.1%}"), ("R@5", "R@5", "{:.1%}"),
                     ("avg_rank", "avg rank", "{:.2f}")]
RETRIEVAL_FOOTER = "higher is better: R@k; lower is better: average rank (1 is perfect)"
QUALITY_FOOTER = (
    "higher is better: SSIM, PSNR (dB); lower is better: LPIPS, FID; sharpness: 1.0 is as sharp as the real "
    "photos (Laplacian variance), below 1 is blurrier\n"
    "appearance (appearance.py): part ΔE, torso ΔE = CIELAB colour error of the body parts in the target's "
    "regions (lower is better); torso r = correlation of the torso colour with the target's (1: follows the "
    "person); src sens = output change when the source is swapped over the sources' difference (0: the "
    "source is ignored; the truth row, on the built-in benchmark: what a perfect model's would be)")
SIGN_FOOTER = (
    "sign language (videos only): Hand SSIM = SSIM on a 60/260-of-the-height square around each hand's "
    "middle knuckle (higher is better); temporal = mean abs gap between the generated and the real "
    "frame-to-frame change, 0-1 scale (lower is better; a frozen video scores the real change)")


def print_table(rows: dict, columns=None, file=None, footer: str = QUALITY_FOOTER) -> None:
    """Print {row name: metrics dict} as a fixed-width table, then the footer saying which way is
    better; columns no row has are skipped."""
    columns = [c for c in (columns or TABLE_COLUMNS) if any(c[0] in row for row in rows.values())]
    cells = [["", *[header for _, header, _ in columns]]]
    for name, row in rows.items():
        cells.append([name, *[fmt.format(row[k]) if k in row else "-" for k, _, fmt in columns]])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for line in cells:
        print("  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]),
              file=file)
    print(footer, file=file)
    if footer is QUALITY_FOOTER and any("hand_ssim" in row or "temporal" in row for row in rows.values()):
        print(SIGN_FOOTER, file=file)
