"""The one data pipeline: pairs of (source, target) images with their poses, from a DeepFashion copy in
any layout PGPIS code uses or a PHOENIX-2014T copy of signing videos, and the built-in benchmarks.

Pose-guided person image synthesis (PGPIS) redraws the person of a *source* image in a *target*
pose. Each dataset's files are read where their concept lives, into one convention (poses.py):
keypoints a (K, 2) float array of (x, y) pixels in the frame of their image, -1 for a missing joint.

  csv, nted, pcdm   DeepFashion In-shop as PATN/GFLA/CFLD, NTED/PIDM and PCDM/FPDM store it, OpenPose
                    COCO-18 keypoints in the 256x176 frame (deepfashion.py)
  phoenix           keypoints/{train,test}/VIDEO/*.txt (COCO-WholeBody, one file per frame) beside the
                    frames of PHOENIX-2014T; keypoints become the 50 joints of the upper body and both
                    hands (poses.SIGN50), pairs are each video's first frame to every frame (sign_data.py)

Give a script the folder that holds the listing files; `detect_layout` finds the layout, and
`PairDataset` prints one line (`data: ROOT: csv layout, train: ... pairs, ... images in ...`).
Images are stretched to a square `image_size`, as CFLD does; a padded 256x256 DeepFashion copy has
its 176-wide person cut out first. `flip=True` mirrors source, target and both poses together and
swaps left and right joints (poses.FLIP_PERM); without the swap, a mirrored skeleton would have the
wrong colours. How a pose becomes a map (`render_pose`, the layouts, their colours) is poses.py's.
Bad input (a missing folder or image, a malformed or short keypoint row, a pair that names an
image without keypoints, a malformed pair row) stops with a one-line DataError that names the
file, the row and what was expected; the command line prints it as `error: ...` and exits 2.

    ds = PairDataset(root, "train", image_size=256, flip=True)   # heatmaps=True: + K channels
    item = ds[0]   # source, target (3, S, S) in [-1, 1]; source_pose, target_pose (P, S, S) in
                   # [0, 1]; source_name, target_name; source_keypoints, target_keypoints (K, 2)
    resize_for_eval(images, (256, 176))   # generated squares back to the photo size (or 512x352)

No DeepFashion photo can be downloaded here, so `synthesize` writes a stand-in in the csv
layout: one appearance per clothing item (skin, hair, garments with colours and patterns),
drawn in each of that item's real poses (4,061 OpenPose poses of 1,000 items, in assets/).
How one person is drawn from its keypoints and appearance is persons.py's concept; this
file chooses the poses, pairs and splits and writes the files. Of the 4,061 rows, 640 have no
joints (shots of the garment alone) and are skipped and counted. The pairs are the real test pairs
between drawable images (8,670), split by item id about 9:1: train 786 items, 2,971 images,
7,848 pairs; test 87 items, 316 images, 822 pairs. The output is deterministic for a seed.
`--synthesize-sign` (or `--data sign` in train.py) draws the signer benchmark: sign_data.py.
`--annotations FILE` draws your own poses: a file whose name contains "resize" is read in the
256x176 frame, any other file in the padded 256x256 frame, and the pairs are all ordered pairs
of views of one item id (the name up to its last "_"). `ensure_benchmark(size, root="runs")`
returns runs/benchmark-{H}x{W}, drawn on first use in a temporary folder and then renamed, so a
crash never leaves half a benchmark.

Commands:
    python data.py --synthesize runs/bench --size 64x44      # the built-in benchmark
    python data.py --synthesize-sign runs/sign                # the built-in signer benchmark (128x104)
    python data.py --check ROOT                               # what is there, what is missing (exit 1)
    python data.py --preview ROOT --out runs/preview.png      # look at pairs and pose maps
    python data.py --bench ROOT                               # loader speed, batch 32 at 256
    python -m pytest -q tests/test_data.py

Shapes: B batch, S square training size, H W height width, P pose channels (3, or 3 + K
with heatmaps), K keypoints (18 COCO-18, 50 for a signer).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

import deepfashion  # DeepFashion's layouts and keypoint files; it imports nothing from here (no circle)
import persons  # the benchmark's drawn persons; persons.py imports nothing from here
import sign_data  # PHOENIX-2014T's layout and the signer benchmark; it imports nothing from here
from cli import option, parse_config, parse_size, usage_error
from deepfashion import BUNDLED_ANNOTATIONS, BUNDLED_PAIRS, FRAME, item_id, read_keypoint_csv, read_pair_csv
from poses import DataError, flip_keypoints, is_missing, layout_of, pose_heatmaps, render_pose, scale_keypoints

SPLITS = ("train", "test")


# ----------------------------------------------------------------------------- layouts

def detect_layout(root, verbose: bool = False) -> str:
    """'csv', 'nted', 'pcdm' or 'phoenix' from the files in `root`; `verbose` prints the one-line finding."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected a DeepFashion copy; "
                        f"`python data.py --synthesize {root}` draws the built-in benchmark)")
    names = set(os.listdir(root))
    found = [layout for layout, hit in (
        ("csv", any(deepfashion.CSV_FILE.fullmatch(n) for n in names)),
        ("nted", bool({"train_pairs.txt", "test_pairs.txt"} & names)),
        ("pcdm", bool({"train_data.json", "test_data.json"} & names)),
        ("phoenix", sign_data.is_phoenix(root)),
    ) if hit]
    if not found:
        raise DataError(f"{root}: no dataset layout found (looked for fashion-resize-pairs-*.csv "
                        "or fasion-*.csv (csv), train/test_pairs.txt (nted), train/test_data.json (pcdm), "
                        "keypoints/{train,test}/ (phoenix))")
    if verbose:
        also = f" (also {', '.join(found[1:])} files, ignored)" if len(found) > 1 else ""
        print(f"data: {root}: {found[0]} layout{also}")
    return found[0]


@dataclass
class SplitIndex:
    """What one split of a layout holds, names already in the csv convention."""

    layout: str
    pairs: list  # [(source_name, target_name)]
    rows: list  # "file:line" each pair came from, for error messages
    keypoints: dict  # name -> (K, 2) (x, y) in `frame` (256x176 for DeepFashion)
    files: dict  # name -> image path relative to the image folder
    listing: str  # the files that were read, for the one-line layout message
    frame: tuple = FRAME  # (H, W) the keypoints are pixels of
    videos: dict = field(default_factory=dict)  # video -> [frame names in order] (phoenix only)


@functools.lru_cache(maxsize=8)
def _split_index_cached(root: str, split: str, layout: str, stamp: tuple) -> SplitIndex:
    build = {"csv": deepfashion.index_csv, "nted": deepfashion.index_nted, "pcdm": deepfashion.index_pcdm,
             "phoenix": sign_data.index_phoenix}[layout]
    return SplitIndex(**build(Path(root), split))


def split_index(root, split: str) -> SplitIndex:
    """The parsed split, cached until a listing file in `root` changes."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got '{split}'")
    root = Path(root)
    layout = detect_layout(root)
    stamp = tuple(sorted((n, os.stat(root / n).st_mtime_ns) for n in os.listdir(root)
                         if n.endswith((".csv", ".txt", ".json"))))
    if layout == "phoenix" and (root / "keypoints" / split).is_dir():  # a video folder added or removed
        stamp += (os.stat(root / "keypoints" / split).st_mtime_ns,)
    return _split_index_cached(str(root.resolve()), split, layout, stamp)


def load_annotations(root, split: str) -> dict:
    """name -> float32 (K, 2) (x, y) keypoints in the split's frame (256x176 for DeepFashion), -1 missing."""
    return dict(split_index(root, split).keypoints)


def load_pairs(root, split: str) -> list:
    """[(source_name, target_name)] of a split, in file order."""
    return list(split_index(root, split).pairs)


def _image_dir(root: Path, split: str, layout: str, image_dir=None) -> Path:
    if image_dir is not None:
        if not Path(image_dir).is_dir():
            raise DataError(f"{image_dir}: image folder not found")
        return Path(image_dir)
    if layout == "phoenix":
        return sign_data.image_dir(root, split)
    if layout != "csv":
        return root  # nted/pcdm entries are paths relative to the root (img/...)
    for name in (f"{split}_highres", split):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: no image folder for split '{split}' (looked for {split}_highres/ and {split}/; "
                    "pass image_dir=)")


def _find_image(image_dir: Path, rel: str):
    """The image file of `rel`; PIDM stores .png copies of the .jpg names, so try both."""
    path = image_dir / rel
    for candidate in (path, path.with_suffix(".png"), path.with_suffix(".jpg"), image_dir / "img" / rel):
        if candidate.is_file():
            return candidate
    return None


def resolve_images(index: SplitIndex, image_dir: Path):
    """(name -> Path for every image the pairs use, [(name, pair row)] of missing images)."""
    paths, missing = {}, []
    for (source, target), row in zip(index.pairs, index.rows):
        for name in (source, target):
            if name not in paths:
                found = _find_image(image_dir, index.files[name])
                paths[name] = found
                if found is None:
                    missing.append((name, row))
    return {n: p for n, p in paths.items() if p is not None}, missing


# ----------------------------------------------------------------------------- the dataset

class PairDataset(Dataset):
    """(source, target) pairs of one split: images in [-1, 1] and pose maps in [0, 1].

    Images are stretched to a square `image_size` (as CFLD does; `resize_for_eval` undoes
    it); `flip` mirrors source, target and both poses together with left/right swapped.
    Items: source, target (3, S, S); source_pose, target_pose (P, S, S); source_name,
    target_name; source_keypoints, target_keypoints (K, 2) (x, y) in the S x S frame.
    `frame` is the (H, W) the keypoints of the files are in, `videos` (phoenix layout) each
    video's frame names in order.
    """

    def __init__(self, root, split, image_size, flip=False, heatmaps=False, image_dir=None, verbose=True):
        self.root, self.split = Path(root), split
        self.image_size, self.flip, self.heatmaps = int(image_size), bool(flip), bool(heatmaps)
        index = split_index(self.root, split)
        self.layout, self.pairs, self.keypoints = index.layout, list(index.pairs), index.keypoints
        self.frame, self.videos = tuple(index.frame), index.videos
        if not self.pairs:
            raise DataError(f"{self.root}: split '{split}' has no pairs ({index.listing})")
        self.image_dir = _image_dir(self.root, split, self.layout, image_dir)
        self.paths, missing = resolve_images(index, self.image_dir)
        if missing:
            name, row = missing[0]
            raise DataError(f"{row}: image file not found: {self.image_dir / index.files[name]} "
                            f"({len(missing)} of {len(self.paths) + len(missing)} images missing)")
        joints = len(layout_of(next(iter(self.keypoints.values()))).joint_names)
        self.pose_channels = 3 + (joints if self.heatmaps else 0)
        if verbose:
            print(f"data: {self.root}: {self.layout} layout, {split}: {len(self.pairs):,} pairs, "
                  f"{len(self.paths):,} images in {self.image_dir} ({index.listing})")

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, name: str) -> Path:
        return self.paths[name]

    def load_image(self, name: str, flipped: bool = False) -> torch.Tensor:
        """(3, S, S) in [-1, 1], mirrored in x if `flipped`."""
        path, size = self.paths[name], self.image_size
        try:
            with Image.open(path) as im:
                im.draft("RGB", (size, size))  # JPEG: decode big photos at a reduced scale, much faster
                im = im.convert("RGB")
        except OSError as err:
            raise DataError(f"{path}: cannot read image ({err})") from None
        return self.image_tensor(im, flipped)

    def image_tensor(self, im: Image.Image, flipped: bool = False) -> torch.Tensor:
        """A PIL RGB photo -> (3, S, S) in [-1, 1], cropped and resized as every file is."""
        size = self.image_size
        if im.width == im.height and self.frame == FRAME:  # a padded 256x256 DeepFashion copy:
            # keep the 176/256 wide person crop
            keep = round(im.width * FRAME[1] / FRAME[0])
            left = (im.width - keep) // 2
            im = im.crop((left, 0, left + keep, im.height))
        im = im.resize((size, size), Image.BILINEAR)  # antialiased when shrinking
        if flipped:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        # note: make channels-first memory *before* the float copy; a permuted view would stay
        # strided and make the DataLoader's torch.stack several times slower
        pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1)))  # (3, S, S) uint8
        return pixels.float().div_(127.5).sub_(1.0)

    def pose_map(self, keypoints: np.ndarray) -> torch.Tensor:
        """(P, S, S) in [0, 1] from (K, 2) keypoints already in the S x S frame."""
        size = self.image_size
        pose = render_pose(keypoints, size, size).transpose(2, 0, 1)  # (3, S, S)
        pose = torch.from_numpy(np.ascontiguousarray(pose))
        pose = pose.float().div_(255.0)
        if self.heatmaps:
            heat = torch.from_numpy(pose_heatmaps(keypoints, size, size))  # (K, S, S)
            pose = torch.cat([pose, heat], dim=0)  # (3 + K, S, S)
        return pose

    def load_item(self, index: int, flipped: bool = False) -> dict:
        source, target = self.pairs[index]
        item = {"source_name": source, "target_name": target}
        for role, name in (("source", source), ("target", target)):
            keypoints = scale_keypoints(self.keypoints[name], self.frame, (self.image_size, self.image_size))
            if flipped:
                keypoints = flip_keypoints(keypoints, self.image_size)
            item[role] = self.load_image(name, flipped)
            item[f"{role}_pose"] = self.pose_map(keypoints)
            item[f"{role}_keypoints"] = torch.from_numpy(keypoints)
        return item

    def __getitem__(self, index: int) -> dict:
        flipped = self.flip and bool(torch.rand(()) < 0.5)  # torch's RNG is seeded per worker
        return self.load_item(index, flipped)


def resize_for_eval(images: torch.Tensor, size=(256, 176)) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 3, h, w), bicubic with antialiasing, clamped to the input's range
    ([-1, 1] if any value is negative, else [0, 1]) since bicubic overshoots at edges."""
    low = -1.0 if images.min() < 0 else 0.0
    out = F.interpolate(images.float(), size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(low, 1.0)  # (B, 3, h, w)


# ----------------------------------------------------------------------------- grids

def tensor_to_pil(img, value_range=(-1.0, 1.0)) -> Image.Image:
    """(C, H, W) tensor (or (1, C, H, W)) in `value_range` -> RGB PIL image. A pose map with
    heatmap channels shows its first three (the skeleton); one channel is shown grey.
    PIL images and uint8 (H, W, 3) arrays pass through."""
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, np.ndarray):
        return Image.fromarray(img.astype(np.uint8))
    t = img.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]  # (C, H, W)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)  # (3, H, W)
    low, high = value_range
    t = ((t[:3] - low) / (high - low)).clamp(0, 1)
    return Image.fromarray((t * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy())  # (H, W, 3)


def save_grid(rows, path, labels=None, value_range=(-1.0, 1.0), pad=2) -> Path:
    """Write a PNG grid (see grid_image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(rows, labels, value_range, pad).save(path)
    return path


def grid_image(rows, labels=None, value_range=(-1.0, 1.0), pad=2) -> Image.Image:
    """A grid as one image: `rows` is a list of rows of images (tensors, PIL images, uint8 arrays
    or None for a blank cell). `value_range` is one (low, high) for every tensor or a list
    with one per column (images [-1, 1], pose maps [0, 1]); `labels` titles the columns."""
    rows = [list(r) for r in rows]
    ncols = max(len(r) for r in rows)
    ranges = list(value_range) if isinstance(value_range[0], (tuple, list)) else [value_range] * ncols
    if len(ranges) < ncols:
        raise ValueError(f"save_grid: value_range has {len(ranges)} entries for {ncols} columns")
    cells = [[None if c is None else tensor_to_pil(c, ranges[j]) for j, c in enumerate(r)] for r in rows]
    cw = max(c.width for r in cells for c in r if c is not None)
    ch = max(c.height for r in cells for c in r if c is not None)
    top = 14 if labels else 0
    grid = Image.new("RGB", (pad + ncols * (cw + pad), top + pad + len(rows) * (ch + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(labels or []):
        draw.text((pad + j * (cw + pad) + 2, 1), str(label), fill=(0, 0, 0))
    for i, r in enumerate(cells):
        for j, cell in enumerate(r):
            if cell is not None:
                grid.paste(cell, (pad + j * (cw + pad) + (cw - cell.width) // 2, top + pad + i * (ch + pad)))
    return grid


# ----------------------------------------------------------------------------- writing the benchmark

def _drawable(kp: np.ndarray) -> str:
    """'' if a pose can be drawn, else why not (the reason is counted)."""
    missing = is_missing(kp)
    if missing.all():
        return "no_joints"
    return "" if not missing[[1, 2, 5]].all() else "no_torso"


def _synth_poses(annotations):
    """Drawable poses name -> (18, 2) of an annotation file, and counts of skipped rows."""
    table = read_keypoint_csv(BUNDLED_ANNOTATIONS if annotations is None else annotations)
    poses, skipped = {}, {"no_joints": 0, "no_torso": 0}
    for name, kp in table.items():
        reason = _drawable(kp)
        if reason:
            skipped[reason] += 1
        else:
            poses[name] = kp
    return poses, skipped, len(table)


def _synth_pairs(poses: dict, annotations):
    """The real pairs between drawable images (bundled poses), or all ordered pairs of views
    of the same item (a user's poses); and how many real pairs were dropped."""
    if annotations is None:
        rows = read_pair_csv(BUNDLED_PAIRS)
        pairs = [(s, t) for s, t, _ in rows if s in poses and t in poses]
        return pairs, len(rows) - len(pairs)
    views = {}
    for name in sorted(poses):
        views.setdefault(item_id(name), []).append(name)
    return [(s, t) for names in views.values() for s in names for t in names if s != t], 0


def _split_items(pairs, seed, max_items, source):
    """Items in a seeded order, cut to `max_items`, about 9:1 into (train, test)."""
    items = sorted({item_id(s) for s, _ in pairs})
    if not items:
        raise DataError(f"{source}: no pair of two drawable views of one item")
    order = np.random.default_rng(seed).permutation(len(items))
    items = [items[i] for i in order][: max_items or None]
    n_test = max(1, round(0.1 * len(items))) if len(items) > 1 else 0
    return set(items[n_test:]), set(items[:n_test])


def _draw_files(jobs):
    """Draw and save [(path, keypoints, item, seed, size)]; run in a worker process."""
    for path, keypoints, item, seed, size in jobs:
        persons.draw_person(keypoints, persons.sample_appearance(item, seed), size).save(path, quality=95)
    return len(jobs)


def _write_split(out: Path, split, names, pairs, poses, size, seed, workers):
    folder = out / f"{split}_highres"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if Path(name).suffix.lower() not in (".jpg", ".jpeg", ".png"):
            raise DataError(f"image name '{name}' must end in .jpg or .png")
    persons.draw_all(_draw_files, [(folder / n, poses[n], item_id(n), seed, size) for n in names], workers)
    with open(out / f"fashion-resize-annotation-{split}.csv", "w", encoding="utf-8") as f:
        f.write("name:keypoints_y:keypoints_x\n")
        for name in names:
            kp = np.round(poses[name]).astype(int)
            f.write(f"{name}: {kp[:, 1].tolist()}: {kp[:, 0].tolist()}\n")
    with open(out / f"fashion-resize-pairs-{split}.csv", "w", encoding="utf-8") as f:
        f.write("from,to\n" + "".join(f"{s},{t}\n" for s, t in pairs))


def synthesize(out_dir, size=(256, 176), seed=0, annotations=None, max_items=None, workers=2) -> dict:
    """Draw the built-in benchmark into `out_dir` in the csv layout; returns counts.

    Every item id gets one persons.Appearance and is drawn in each of its real poses; pairs are the
    real test pairs (or, with a user's `annotations`, all ordered pairs of views of an item),
    split by item id into train and test (about 9:1). Deterministic for a seed.
    `workers` processes draw (images are independent, so the result does not depend on it).
    """
    start = time.perf_counter()
    height, width = int(size[0]), int(size[1])
    if height < 16 or width < 11:
        raise DataError(f"size must be at least 16x11 (H x W), got {height}x{width}")
    out = Path(out_dir)
    poses, skipped, rows = _synth_poses(annotations)
    pairs, dropped = _synth_pairs(poses, annotations)
    counts = {"rows": rows, "skipped_no_joints": skipped["no_joints"], "skipped_no_torso": skipped["no_torso"],
              "pairs_dropped": dropped}
    source = annotations or BUNDLED_ANNOTATIONS
    for split, items in zip(SPLITS, _split_items(pairs, seed, max_items, source)):
        names = sorted(n for n in poses if item_id(n) in items)
        split_pairs = [(s, t) for s, t in pairs if item_id(s) in items]
        _write_split(out, split, names, split_pairs, poses, (height, width), seed, workers)
        counts.update({f"items_{split}": len(items), f"images_{split}": len(names), f"pairs_{split}": len(split_pairs)})
    counts["seconds"] = round(time.perf_counter() - start, 2)
    meta = {"size": [height, width], "seed": seed, "annotations": str(source), "counts": counts}
    (out / "benchmark.json").write_text(json.dumps(meta, indent=1))  # written last: marks a finished run
    return counts


BENCHMARKS = {"deepfashion": ("benchmark", (64, 44)), "sign": ("sign", (128, 104))}  # kind -> (folder, size)


def ensure_benchmark(size=(256, 176), root="runs", *, seed=0, max_items=None, kind="deepfashion") -> Path:
    """A built-in benchmark `root/benchmark-{H}x{W}` (kind "sign": `root/sign-{H}x{W}`), drawn on
    first use: built in a temporary folder and renamed, so a crash or a second process never sees
    half of one."""
    height, width = int(size[0]), int(size[1])
    name = f"{BENCHMARKS[kind][0]}-{height}x{width}" + (f"-seed{seed}" if seed else "")
    name += f"-{max_items}items" if max_items else ""
    target = Path(root) / name
    if (target / "benchmark.json").is_file():
        return target
    if target.exists():
        raise DataError(f"{target}: exists but is not a finished benchmark (no benchmark.json); delete it")
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"data: drawing the built-in {kind} benchmark {target} ...", end=" ", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if kind == "sign":
            counts = sign_data.synthesize_sign(tmp, (height, width), seed=seed, max_sequences=max_items)
        else:
            counts = synthesize(tmp, (height, width), seed=seed, max_items=max_items)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "benchmark.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: use its copy
    except BaseException:
        print("failed", flush=True)  # end the progress line; the error follows on its own
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(_benchmark_summary(kind, counts))
    return target


def _benchmark_summary(kind: str, counts: dict) -> str:
    if kind == "sign":
        return (f"{counts['videos_train']:,} training videos ({counts['frames_train']:,} frames) from "
                f"{counts['sequences_train']} sequences, {counts['videos_test']} test videos "
                f"({counts['frames_test']:,} frames) in {counts['seconds']:.1f} s")
    skipped = counts["skipped_no_joints"] + counts["skipped_no_torso"]
    return (f"{counts['images_train'] + counts['images_test']:,} images, {counts['pairs_train']:,} train / "
            f"{counts['pairs_test']:,} test pairs ({skipped:,} pose rows without a body skipped) "
            f"in {counts['seconds']:.1f} s")


def dataset_root(data: str = "", bench_size: str = "", sign_size: str = "", root="runs") -> Path:
    """What a `--data` flag names: a folder; "" the built-in DeepFashion benchmark (photos of
    `bench_size`); "sign" the built-in signer benchmark (frames of `sign_size`). A built-in one is
    drawn on first use; an empty size is its default (64x44, 128x104)."""
    if data not in ("", "sign"):
        return Path(data)
    kind, size = ("sign", sign_size) if data == "sign" else ("deepfashion", bench_size)
    size = parse_size(size, "--sign-size" if kind == "sign" else "--bench-size") if size else BENCHMARKS[kind][1]
    return ensure_benchmark(size=size, root=root, kind=kind)


# ----------------------------------------------------------------------------- command line

def check(root) -> int:
    """Print the layout, the counts of each split and whatever is missing; 1 if anything is."""
    root = Path(root)
    detect_layout(root, verbose=True)
    problems = 0
    for split in SPLITS:
        try:
            index = split_index(root, split)
            image_dir = _image_dir(root, split, index.layout)
        except DataError as err:
            print(f"  {split}: {err}")
            problems += 1
            continue
        paths, missing = resolve_images(index, image_dir)
        empty = sum(bool(is_missing(kp).all()) for kp in index.keypoints.values())
        print(f"  {split}: {len(index.pairs):,} pairs, {len(index.keypoints):,} keypoint rows ({empty:,} with no "
              f"joints), {len(paths) + len(missing):,} images used, {len(missing):,} missing in {image_dir}")
        if index.videos:
            print(f"    {len(index.videos):,} videos, keypoints in a {index.frame[0]}x{index.frame[1]} frame")
        for name, row in missing[:5]:
            print(f"    missing ({row}): {image_dir / index.files[name]}")
        problems += bool(missing)
    return 1 if problems else 0


def preview(root, out, split="test", count=6, image_size=256) -> Path:
    """A PNG grid: per pair source, source pose, target pose, target (back at 256x176)."""
    data = PairDataset(root, split, image_size)
    picks = np.linspace(0, len(data) - 1, num=min(count, len(data))).round().astype(int)
    rows = []
    for i in picks:
        item = data.load_item(int(i))
        cells = [item["source"], item["source_pose"][:3], item["target_pose"][:3], item["target"]]
        size = (256, round(256 * data.frame[1] / data.frame[0]))  # the photos' aspect: 256x176 for DeepFashion
        rows.append([resize_for_eval(c[None], size)[0] for c in cells])  # (3, 256, w) each
    ranges = [(-1.0, 1.0), (0.0, 1.0), (0.0, 1.0), (-1.0, 1.0)]
    path = save_grid(rows, out, labels=["source", "source pose", "target pose", "target"], value_range=ranges)
    print(f"data: wrote {path} ({len(rows)} pairs of {root}, {split})")
    return path


def bench(root, split="train", image_size=256, batch_size=32, workers=2, batches=20) -> float:
    """Seconds per batch of a shuffled, flipping loader after its workers have started."""
    data = PairDataset(root, split, image_size, flip=True)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # warm-up: start the workers
    start, done = time.perf_counter(), 0
    while done < batches:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
    per_batch = (time.perf_counter() - start) / batches
    print(f"data: {batches} batches of {batch_size} at {image_size}x{image_size}, {workers} workers: "
          f"{per_batch * 1000:.0f} ms per batch ({batch_size / per_batch:.0f} pairs/s)")
    return per_batch



@dataclass
class DataCommand:
    """The flags of `python data.py`: one task (`TASKS`: what to do, and to which folder), then
    the settings of that task."""

    synthesize: str | None = option(None, "task: draw the built-in benchmark into OUT", metavar="OUT")
    synthesize_sign: str | None = option(None, "task: draw the built-in signer benchmark (phoenix layout) into OUT",
                                         metavar="OUT")
    check: str | None = option(None, "task: layout, counts and missing files of a data folder", metavar="ROOT")
    preview: str | None = option(None, "task: write a PNG grid of pairs with their pose maps", metavar="ROOT")
    bench: str | None = option(None, "task: time the loader", metavar="ROOT")
    size: str = option("", "benchmark image size HxW (default 256x176, signers 128x104)")
    seed: int = option(0, "benchmark seed")
    annotations: str | None = option(None, "keypoint CSV (either convention) to draw instead of the bundled one")
    max_items: int | None = option(None, "draw only this many clothing items (signers: sequences per split)")
    looks: int = option(40, "--synthesize-sign: appearances each training sequence is drawn in")
    frames_per_look: int = option(8, "--synthesize-sign: frames of a sequence drawn per look (+ the first)")
    out: str = option("runs/preview.png", "PNG path for --preview")
    split: str | None = option(None, "split for --preview (test) / --bench (train)", choices=SPLITS)
    count: int = option(6, "pairs in the --preview grid")
    image_size: int = option(256, "square training size of --preview / --bench")
    batch_size: int = option(32, "--bench batch size")
    workers: int = option(2, "--bench loader workers")
    batches: int = option(20, "--bench timed batches")


TASKS = ("synthesize", "synthesize_sign", "check", "preview", "bench")  # exactly one is given


def parse_command(argv=None) -> DataCommand:
    """The flags, with exactly one task among them (else a one-line error)."""
    about = "Pairs of DeepFashion or PHOENIX copies, pose maps, the built-in benchmarks."
    cfg, given = parse_config(DataCommand, argv, about)
    tasks = ["--" + t.replace("_", "-") for t in TASKS if t in given]
    if len(tasks) != 1:
        usage_error(f"give exactly one of --synthesize --synthesize-sign --check --preview --bench, got {len(tasks)}"
                    + (f" ({' '.join(tasks)})" if tasks else ""))
    return cfg


def _run(cfg: DataCommand) -> int:
    if cfg.synthesize or cfg.synthesize_sign:
        kind = "deepfashion" if cfg.synthesize else "sign"
        size = parse_size(cfg.size) if cfg.size else (256, 176) if cfg.synthesize else BENCHMARKS[kind][1]
        if cfg.synthesize:
            counts = synthesize(cfg.synthesize, size, cfg.seed, cfg.annotations, cfg.max_items)
        else:
            counts = sign_data.synthesize_sign(cfg.synthesize_sign, size, cfg.seed, cfg.looks, cfg.frames_per_look,
                                               cfg.max_items)
        print(f"data: wrote {cfg.synthesize or cfg.synthesize_sign}: {_benchmark_summary(kind, counts)}")
        return 0
    if cfg.check:
        return check(cfg.check)
    if cfg.preview:
        preview(cfg.preview, cfg.out, cfg.split or "test", cfg.count, cfg.image_size)
        return 0
    bench(cfg.bench, cfg.split or "train", cfg.image_size, cfg.batch_size, cfg.workers, cfg.batches)
    return 0


def main(argv=None):
    cfg = parse_command(argv)
    try:
        code = _run(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:  # DataError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
