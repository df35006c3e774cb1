"""The one data pipeline: DeepFashion pairs in every layout PGPIS code uses, OpenPose pose
maps, and a built-in benchmark of persons drawn in real DeepFashion poses.

Pose-guided person image synthesis (PGPIS) redraws the person of a *source* image in a
*target* pose. Its benchmark is DeepFashion In-shop (Liu et al., CVPR 2016) with OpenPose
COCO-18 keypoints (Cao et al., arXiv:1611.08050), paired as in Deformable GAN
(arXiv:1801.00055) and PATN (arXiv:1904.03349) and used since by GFLA (arXiv:2003.00696),
DPTN (CVPR 2022), NTED (arXiv:2204.06160), PIDM (arXiv:2211.12500), PCDM
(arXiv:2310.06313), CFLD (arXiv:2402.18078) and FPDM. Each of those repositories stores the
same data differently; this file reads three layouts and converts their keypoints *once*
into one convention: an (18, 2) float array of (x, y) pixels in the frame of the 256x176
image, -1 for a missing joint (a joint with a negative coordinate counts as missing).

  csv   fashion-resize-pairs-{train,test}.csv + fashion-resize-annotation-{train,test}.csv
        (y first, 256x176 frame), images in {train,test}_highres/; also the 'fasion' prefix
        and the older fasion-annotation-*.csv (256x256 frame, 40-pixel border in x).
  nted  {train,test}_pairs.txt (target first, then sources), img/..., one pose/....txt of
        18 rows "x y" per image (256x256 frame with the 40-pixel border), as NTED/PIDM.
  pcdm  {train,test}_data.json, [{"source_image": ..., "target_image": ...}], poses as nted.

Give a script the folder that holds the listing files; `detect_layout` finds the layout, and
`PairDataset` prints one line (`data: ROOT: csv layout, train: ... pairs, ... images in ...`).
In nted and pcdm, image names
become the csv convention (img/WOMEN/Dresses/id_00000002/02_1_front.jpg ->
fashionWOMENDressesid0000000202_1front.jpg), so output stems stay unique. Images are stretched
to a square `image_size`, as CFLD does; a padded 256x256 copy has its 176-wide person cut out
first. `flip=True` mirrors source, target and both poses together and swaps left and right joints
(FLIP_PERM); without the swap, a mirrored skeleton would have the wrong colours. `render_pose`
draws the OpenPose skeleton (17 limbs, 18 joints, OpenPose's colours) from keypoints in any frame.
Bad input (a missing folder or image, a malformed or short keypoint row, a pair that names an
image without keypoints, a malformed pair row) stops with a one-line DataError that names the
file, the row and what was expected; the command line prints it as `error: ...` and exits 2.

    ds = PairDataset(root, "train", image_size=256, flip=True)   # heatmaps=True: + 18 channels
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
`--annotations FILE` draws your own poses: a file whose name contains "resize" is read in the
256x176 frame, any other file in the padded 256x256 frame, and the pairs are all ordered pairs
of views of one item id (the name up to its last "_"). `ensure_benchmark(size, root="runs")`
returns runs/benchmark-{H}x{W}, drawn on first use in a temporary folder and then renamed, so a
crash never leaves half a benchmark.

Commands:
    python data.py --synthesize runs/bench --size 64x44      # the built-in benchmark
    python data.py --check ROOT                               # what is there, what is missing (exit 1)
    python data.py --preview ROOT --out runs/preview.png      # look at pairs and pose maps
    python data.py --bench ROOT                               # loader speed, batch 32 at 256
    python -m pytest -q tests/test_data.py

Shapes: B batch, S square training size, H W height width, P pose channels (3, or 3 + 18
with heatmaps), K = 18 keypoints.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

import persons  # the benchmark's drawn persons; persons.py imports nothing from here (no circle)
from cli import option, parse_config, parse_size, usage_error

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_ANNOTATIONS = ASSETS / "fasion-annotation-test.csv"  # 4,061 real OpenPose poses
BUNDLED_PAIRS = ASSETS / "fasion-pairs-test.csv"  # the 8,670 standard test pairs

FRAME = (256, 176)  # (H, W): the frame every loader converts keypoints into
BORDER = 40  # the older 256x256 files pad the 176-wide crop by 40 pixels on each side of x
MISSING = -1.0
SPLITS = ("train", "test")


class DataError(ValueError):
    """Bad or missing data; the message names the file (and row) and what was expected."""


# ----------------------------------------------------------------------------- keypoints

KEYPOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear",
    "l_ear",
)
# The 17 OpenPose limbs (neck-shoulders, arms, neck-hips, legs, neck-nose, nose-eyes,
# eyes-ears); limb i is drawn in POSE_COLORS[i], joint j in POSE_COLORS[j], as OpenPose does.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
POSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)


def _mirror_name(name: str) -> str:
    return {"r_": "l_", "l_": "r_"}.get(name[:2], name[:2]) + name[2:]


# A mirrored person's right arm is where the left arm was: flipping an image must also
# swap every left joint with its right twin, or the pose colours would lie.
FLIP_PERM = tuple(KEYPOINT_NAMES.index(_mirror_name(n)) for n in KEYPOINT_NAMES)

LIMB_WIDTH = 6 / 256  # of the image height: 6 px at 256, 2 px at 64
JOINT_RADIUS = 4 / 256  # OpenPose draws 4-pixel joints at 256
HEATMAP_SIGMA = 6 / 256  # sigma = 6 px at 256, as PATN/GFLA's cords_to_map


def is_missing(keypoints: np.ndarray) -> np.ndarray:
    """(..., 18, 2) -> (..., 18) bool: a joint with a negative coordinate is missing."""
    return (np.asarray(keypoints) < 0).any(axis=-1)


def scale_keypoints(keypoints, src_frame, dst_frame) -> np.ndarray:
    """Map (18, 2) (x, y) keypoints from an (h, w) frame to another; x and y separately."""
    kp = np.asarray(keypoints, dtype=np.float32).reshape(18, 2)
    scale = np.array([dst_frame[1] / src_frame[1], dst_frame[0] / src_frame[0]], np.float32)
    out = kp * scale  # note: no half-pixel shift, so x = 0 stays 0 and never turns "missing"
    out[is_missing(kp)] = MISSING
    return out


def flip_keypoints(keypoints, width: int) -> np.ndarray:
    """Mirror (18, 2) keypoints in an image `width` pixels wide, swapping left and right.
    A joint beyond the right edge lands left of 0 and so counts as missing, as one beyond
    the left edge already did."""
    out = np.asarray(keypoints, dtype=np.float32)[list(FLIP_PERM)].copy()  # (18, 2)
    valid = ~is_missing(out)
    out[valid, 0] = (width - 1) - out[valid, 0]  # pixel i goes to pixel width-1-i
    return out


def _from_file_frame(xy: np.ndarray, border: int) -> np.ndarray:
    """(18, 2) (x, y) as a file stores them -> the 256x176 frame, -1 for missing joints."""
    out = np.array(xy, dtype=np.float32, order="C")  # note: C order, the y-first files arrive transposed
    missing = is_missing(out)
    out[:, 0] -= border
    out[missing | is_missing(out)] = MISSING  # the few joints left of the 176-wide crop
    return out


# ----------------------------------------------------------------------------- pose maps

def render_pose(keypoints_xy, height: int, width: int, frame=None) -> np.ndarray:
    """The OpenPose-style RGB skeleton, uint8 (H, W, 3): limbs, then joints on top.

    `frame=(fh, fw)`: the keypoints are in an fh x fw frame and get scaled to H x W
    (x and y separately); None: they already are in the H x W frame. Missing joints and
    every limb touching one are skipped.
    """
    kp = np.asarray(keypoints_xy, dtype=np.float32).reshape(18, 2)
    if frame is not None:
        kp = scale_keypoints(kp, frame, (height, width))
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    missing = is_missing(kp)
    limb_width = max(1, round(height * LIMB_WIDTH))
    radius = max(1, round(height * JOINT_RADIUS))
    for i, (a, b) in enumerate(LIMBS):
        if not (missing[a] or missing[b]):
            draw.line([*map(float, kp[a]), *map(float, kp[b])], fill=POSE_COLORS[i], width=limb_width)
    for j in np.flatnonzero(~missing):
        x, y = map(float, kp[j])
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=POSE_COLORS[j])
    return np.array(canvas)  # (H, W, 3)


def pose_heatmaps(keypoints_xy, height: int, width: int, frame=None, sigma=None) -> np.ndarray:
    """One Gaussian per joint, float32 (18, H, W) in [0, 1]; zeros for a missing joint."""
    kp = np.asarray(keypoints_xy, dtype=np.float32).reshape(18, 2)
    if frame is not None:
        kp = scale_keypoints(kp, frame, (height, width))
    sigma = HEATMAP_SIGMA * height if sigma is None else float(sigma)
    ys = np.arange(height, dtype=np.float32)
    xs = np.arange(width, dtype=np.float32)
    gy = np.exp(-((ys[None, :] - kp[:, 1:2]) ** 2) / (2 * sigma**2))  # (18, H)
    gx = np.exp(-((xs[None, :] - kp[:, 0:1]) ** 2) / (2 * sigma**2))  # (18, W)
    maps = gy[:, :, None] * gx[:, None, :]  # (18, H, W): a 2-D Gaussian is separable
    maps[is_missing(kp)] = 0.0
    return maps.astype(np.float32)


# ----------------------------------------------------------------------------- file readers

def _clip(text: str, n: int = 60) -> str:
    """A bad row quoted on one line, shortened so an error stays one readable line."""
    text = text.strip().replace("\n", " ")
    return repr(text if len(text) <= n else text[:n] + "...")


def _parse_keypoint_row(line: str, where: str, border: int):
    parts = line.split(":")
    if len(parts) != 3:
        raise DataError(f"{where}: expected 'name: [18 y values]: [18 x values]', got {_clip(line)}")
    try:
        ys, xs = json.loads(parts[1]), json.loads(parts[2])
    except json.JSONDecodeError:
        raise DataError(f"{where}: expected two lists of integers like [24, -1, ...], got {_clip(line)}") from None
    if not (isinstance(ys, list) and isinstance(xs, list) and len(ys) == len(xs) == 18):
        counts = f"{len(ys) if isinstance(ys, list) else 'no'} y and {len(xs) if isinstance(xs, list) else 'no'} x"
        raise DataError(f"{where}: expected 18 keypoints (y list, then x list), got {counts} values")
    try:
        xy = np.array([xs, ys], dtype=np.float32).T  # (18, 2): the file is y first, we are x first
    except (TypeError, ValueError):
        raise DataError(f"{where}: keypoints must be numbers, got {_clip(line)}") from None
    return parts[0].strip(), _from_file_frame(xy, border)


def annotation_border(path) -> int:
    """`*resize*` files are in the 256x176 frame; the older ones in the padded 256x256 frame."""
    return 0 if "resize" in Path(path).name else BORDER


@functools.lru_cache(maxsize=16)
def _read_keypoint_csv_cached(path: str, stamp: tuple) -> dict:
    border = annotation_border(path)
    table = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or (lineno == 1 and line.lower().startswith("name")):
                continue  # the header line `name:keypoints_y:keypoints_x`
            name, kp = _parse_keypoint_row(line, f"{path}:{lineno}", border)
            table[name] = kp
    return table


def read_keypoint_csv(path) -> dict:
    """name -> (18, 2) (x, y) in the 256x176 frame, from an annotation CSV of either frame.

    Parsed once per file version (cached on path, size and mtime); treat arrays as read-only.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: keypoint file not found")
    stat = path.stat()
    return dict(_read_keypoint_csv_cached(str(path), (stat.st_mtime_ns, stat.st_size)))


def read_pair_csv(path) -> list:
    """[(source, target, line)] from a `from,to` CSV; the header (and an index column) optional."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) == 3 and (cells[0] == "" or cells[0].isdigit()):
                cells = cells[1:]  # pandas wrote its row index as a first column
            if lineno == 1 and [c.lower() for c in cells] == ["from", "to"]:
                continue
            if len(cells) != 2 or not all(cells):
                raise DataError(f"{path}:{lineno}: expected 'from,to' (two image names), got {_clip(','.join(row))}")
            rows.append((cells[0], cells[1], lineno))
    return rows


def read_pose_txt(path) -> np.ndarray:
    """One NTED/PIDM keypoint file: 18 rows `x y` in the 256x256 frame -> (18, 2) at 256x176."""
    path = Path(path)
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) != 18:
        raise DataError(f"{path}: expected 18 rows 'x y' (OpenPose COCO-18), got {len(lines)} rows")
    xy = np.empty((18, 2), np.float32)
    for i, line in enumerate(lines):
        try:
            xy[i] = [float(v) for v in line.replace(",", " ").split()[:2]]
        except ValueError:
            raise DataError(f"{path}:{i + 1}: expected two numbers 'x y', got {_clip(line)}") from None
    return _from_file_frame(xy, BORDER)


def item_id(name: str) -> str:
    """The clothing item of an image: `fasionWOMENDressesid0000553705_4full.jpg` ->
    `fasionWOMENDressesid0000553705` (everything before the last `_view`)."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return stem.rsplit("_", 1)[0]


def flat_name(rel_path: str) -> str:
    """NTED/PCDM path `img/WOMEN/Dresses/id_00000002/02_1_front.jpg` -> the csv layout's
    `fashionWOMENDressesid0000000202_1front.jpg`, so every layout names images alike and
    stems stay unique (a bare `02_1_front` repeats in every item folder)."""
    parts = Path(rel_path).parts
    if parts and parts[0] in ("img", "img_highres"):
        parts = parts[1:]
    if len(parts) != 4:
        return "_".join(parts)
    gender, category, item, file = parts
    number, _, view = file.partition("_")
    return f"fashion{gender}{category}{item.replace('_', '')}{number}_{view.replace('_', '')}"


# ----------------------------------------------------------------------------- layouts

_CSV_PAIRS = ("{p}-resize-pairs-{s}.csv", "{p}-pairs-{s}.csv")
_CSV_ANNOTATIONS = ("{p}-resize-annotation-{s}.csv", "{p}-annotation-{s}.csv")
_CSV_FILE = re.compile(r"fa(sh|s)ion-(resize-)?(pairs|annotation)-\w+\.csv")


def detect_layout(root, verbose: bool = False) -> str:
    """'csv', 'nted' or 'pcdm' from the files in `root`; `verbose` prints the one-line finding."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected a DeepFashion copy; "
                        f"`python data.py --synthesize {root}` draws the built-in benchmark)")
    names = set(os.listdir(root))
    found = [layout for layout, hit in (
        ("csv", any(_CSV_FILE.fullmatch(n) for n in names)),
        ("nted", bool({"train_pairs.txt", "test_pairs.txt"} & names)),
        ("pcdm", bool({"train_data.json", "test_data.json"} & names)),
    ) if hit]
    if not found:
        raise DataError(f"{root}: no DeepFashion layout found (looked for fashion-resize-pairs-*.csv "
                        "or fasion-*.csv (csv), train_pairs.txt (nted), train_data.json (pcdm))")
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
    keypoints: dict  # name -> (18, 2) (x, y) in the 256x176 frame
    files: dict  # name -> image path relative to the image folder
    listing: str  # the files that were read, for the one-line layout message


def _first_existing(root: Path, patterns, split: str, what: str) -> Path:
    tried = [pat.format(p=p, s=split) for pat in patterns for p in ("fashion", "fasion")]
    for name in tried:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: csv layout without a {what} file for split '{split}' (looked for {', '.join(tried)})")


def _index_csv(root: Path, split: str) -> SplitIndex:
    pairs_path = _first_existing(root, _CSV_PAIRS, split, "pairs")
    ann_path = _first_existing(root, _CSV_ANNOTATIONS, split, "keypoint")
    keypoints = read_keypoint_csv(ann_path)
    pairs, rows = [], []
    for source, target, lineno in read_pair_csv(pairs_path):
        for name in (source, target):
            if name not in keypoints:
                raise DataError(f"{pairs_path}:{lineno}: image '{name}' has no keypoint row in {ann_path.name}")
        pairs.append((source, target))
        rows.append(f"{pairs_path}:{lineno}")
    files = {name: name for name in keypoints}
    return SplitIndex("csv", pairs, rows, keypoints, files, f"{pairs_path.name}, {ann_path.name}")


def _pose_path(root: Path, rel: str) -> Path:
    """NTED keeps `pose/WOMEN/.../02_1_front.txt` beside `img/WOMEN/.../02_1_front.jpg`."""
    parts = Path(rel).parts
    parts = parts[1:] if parts and parts[0] in ("img", "img_highres") else parts
    return (root / "pose").joinpath(*parts).with_suffix(".txt")


def _register(root: Path, rel: str, index: SplitIndex, where: str) -> str:
    name = flat_name(rel)
    if name not in index.files:
        pose = _pose_path(root, rel)
        if not pose.is_file():
            raise DataError(f"{where}: image '{rel}' has no keypoint file (expected {pose})")
        index.keypoints[name] = read_pose_txt(pose)
        index.files[name] = rel
    return name


def _index_nted(root: Path, split: str) -> SplitIndex:
    path = root / f"{split}_pairs.txt"
    if not path.is_file():
        raise DataError(f"{root}: nted layout without {path.name}")
    index = SplitIndex("nted", [], [], {}, {}, f"{path.name}, pose/*.txt")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entries = [e.strip() for e in line.split(",") if e.strip()]
        if not entries:
            continue
        where = f"{path}:{lineno}"
        if len(entries) < 2:
            raise DataError(f"{where}: expected 'target,source[,source...]' (image paths), got {_clip(line)}")
        target, *sources = [_register(root, e, index, where) for e in entries]
        for source in sources:  # note: NTED/PIDM write the *target* first
            index.pairs.append((source, target))
            index.rows.append(f"{path}:{lineno}")
    return index


def _index_pcdm(root: Path, split: str) -> SplitIndex:
    path = root / f"{split}_data.json"
    if not path.is_file():
        raise DataError(f"{root}: pcdm layout without {path.name}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of {{'source_image': ..., 'target_image': ...}}")
    index = SplitIndex("pcdm", [], [], {}, {}, f"{path.name}, pose/*.txt")
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not (isinstance(entry, dict) and isinstance(entry.get("source_image"), str)
                and isinstance(entry.get("target_image"), str)):
            raise DataError(f"{where}: expected {{'source_image': path, 'target_image': path}}, "
                            f"got {_clip(str(entry))}")
        source = _register(root, entry["source_image"], index, where)
        target = _register(root, entry["target_image"], index, where)
        index.pairs.append((source, target))
        index.rows.append(f"{path}: entry {i}")
    return index


@functools.lru_cache(maxsize=8)
def _split_index_cached(root: str, split: str, layout: str, stamp: tuple) -> SplitIndex:
    build = {"csv": _index_csv, "nted": _index_nted, "pcdm": _index_pcdm}[layout]
    return build(Path(root), split)


def split_index(root, split: str) -> SplitIndex:
    """The parsed split, cached until a listing file in `root` changes."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got '{split}'")
    root = Path(root)
    layout = detect_layout(root)
    stamp = tuple(sorted((n, os.stat(root / n).st_mtime_ns) for n in os.listdir(root)
                         if n.endswith((".csv", ".txt", ".json"))))
    return _split_index_cached(str(root.resolve()), split, layout, stamp)


def load_annotations(root, split: str) -> dict:
    """name -> float32 (18, 2) (x, y) keypoints in the 256x176 frame, -1 for missing."""
    return dict(split_index(root, split).keypoints)


def load_pairs(root, split: str) -> list:
    """[(source_name, target_name)] of a split, in file order."""
    return list(split_index(root, split).pairs)


def _image_dir(root: Path, split: str, layout: str, image_dir=None) -> Path:
    if image_dir is not None:
        if not Path(image_dir).is_dir():
            raise DataError(f"{image_dir}: image folder not found")
        return Path(image_dir)
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
    target_name; source_keypoints, target_keypoints (18, 2) (x, y) in the S x S frame.
    """

    def __init__(self, root, split, image_size, flip=False, heatmaps=False, image_dir=None, verbose=True):
        self.root, self.split = Path(root), split
        self.image_size, self.flip, self.heatmaps = int(image_size), bool(flip), bool(heatmaps)
        index = split_index(self.root, split)
        self.layout, self.pairs, self.keypoints = index.layout, list(index.pairs), index.keypoints
        if not self.pairs:
            raise DataError(f"{self.root}: split '{split}' has no pairs ({index.listing})")
        self.image_dir = _image_dir(self.root, split, self.layout, image_dir)
        self.paths, missing = resolve_images(index, self.image_dir)
        if missing:
            name, row = missing[0]
            raise DataError(f"{row}: image file not found: {self.image_dir / index.files[name]} "
                            f"({len(missing)} of {len(self.paths) + len(missing)} images missing)")
        self.pose_channels = 3 + (len(KEYPOINT_NAMES) if self.heatmaps else 0)
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
        if im.width == im.height:  # a padded 256x256 copy: keep the 176/256 wide person crop
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
        """(P, S, S) in [0, 1] from (18, 2) keypoints already in the S x S frame."""
        size = self.image_size
        pose = render_pose(keypoints, size, size).transpose(2, 0, 1)  # (3, S, S)
        pose = torch.from_numpy(np.ascontiguousarray(pose))
        pose = pose.float().div_(255.0)
        if self.heatmaps:
            heat = torch.from_numpy(pose_heatmaps(keypoints, size, size))  # (18, S, S)
            pose = torch.cat([pose, heat], dim=0)  # (21, S, S)
        return pose

    def load_item(self, index: int, flipped: bool = False) -> dict:
        source, target = self.pairs[index]
        item = {"source_name": source, "target_name": target}
        for role, name in (("source", source), ("target", target)):
            keypoints = scale_keypoints(self.keypoints[name], FRAME, (self.image_size, self.image_size))
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
    """Write a PNG grid: `rows` is a list of rows of images (tensors, PIL images, uint8 arrays
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


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


def _draw_all(jobs, workers: int):
    """Images are independent, so two processes draw twice as fast on two cores; small
    jobs (the tests) stay in this process, where starting workers would cost more."""
    if workers <= 1 or len(jobs) < 400:
        return _draw_files(jobs)
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    chunks = [jobs[i::workers * 4] for i in range(workers * 4)]
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return sum(pool.map(_draw_files, chunks))


def _write_split(out: Path, split, names, pairs, poses, size, seed, workers):
    folder = out / f"{split}_highres"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if Path(name).suffix.lower() not in (".jpg", ".jpeg", ".png"):
            raise DataError(f"image name '{name}' must end in .jpg or .png")
    _draw_all([(folder / n, poses[n], item_id(n), seed, size) for n in names], workers)
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


def ensure_benchmark(size=(256, 176), root="runs", *, seed=0, max_items=None) -> Path:
    """The built-in benchmark `root/benchmark-{H}x{W}`, synthesised on first use: built in a
    temporary folder and renamed, so a crash or a second process never sees half of one."""
    height, width = int(size[0]), int(size[1])
    name = f"benchmark-{height}x{width}" + (f"-seed{seed}" if seed else "")
    name += f"-{max_items}items" if max_items else ""
    target = Path(root) / name
    if (target / "benchmark.json").is_file():
        return target
    if target.exists():
        raise DataError(f"{target}: exists but is not a finished benchmark (no benchmark.json); delete it")
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"data: synthesising the built-in benchmark {target} ...", end=" ", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
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
    skipped = counts["skipped_no_joints"] + counts["skipped_no_torso"]
    print(f"{counts['images_train'] + counts['images_test']:,} images, {counts['pairs_train']:,} train / "
          f"{counts['pairs_test']:,} test pairs ({skipped:,} pose rows without a body skipped) "
          f"in {counts['seconds']:.1f} s")
    return target


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
        rows.append([resize_for_eval(c[None])[0] for c in cells])  # (3, 256, 176) each
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
    check: str | None = option(None, "task: layout, counts and missing files of a data folder", metavar="ROOT")
    preview: str | None = option(None, "task: write a PNG grid of pairs with their pose maps", metavar="ROOT")
    bench: str | None = option(None, "task: time the loader", metavar="ROOT")
    size: str = option("256x176", "benchmark image size HxW")
    seed: int = option(0, "benchmark seed")
    annotations: str | None = option(None, "keypoint CSV (either convention) to draw instead of the bundled one")
    max_items: int | None = option(None, "draw only this many clothing items")
    out: str = option("runs/preview.png", "PNG path for --preview")
    split: str | None = option(None, "split for --preview (test) / --bench (train)", choices=SPLITS)
    count: int = option(6, "pairs in the --preview grid")
    image_size: int = option(256, "square training size of --preview / --bench")
    batch_size: int = option(32, "--bench batch size")
    workers: int = option(2, "--bench loader workers")
    batches: int = option(20, "--bench timed batches")


TASKS = ("synthesize", "check", "preview", "bench")  # exactly one is given


def parse_command(argv=None) -> DataCommand:
    """The flags, with exactly one task among them (else a one-line error)."""
    cfg, given = parse_config(DataCommand, argv, "DeepFashion pairs, pose maps and the built-in benchmark.")
    tasks = ["--" + t for t in TASKS if t in given]
    if len(tasks) != 1:
        usage_error(f"give exactly one of --synthesize --check --preview --bench, got {len(tasks)}"
                    + (f" ({' '.join(tasks)})" if tasks else ""))
    return cfg


def _run(cfg: DataCommand) -> int:
    if cfg.synthesize:
        size = parse_size(cfg.size)
        counts = synthesize(cfg.synthesize, size, cfg.seed, cfg.annotations, cfg.max_items)
        print(f"data: wrote {cfg.synthesize}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
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
