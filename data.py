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

No DeepFashion photo can be downloaded here, so `synthesize` draws a stand-in in the csv
layout: one appearance per clothing item (skin, hair, garments with colours and patterns),
drawn in each of that item's real poses (4,061 OpenPose poses of 1,000 items, in assets/).

Commands:
    python data.py --synthesize runs/bench --size 64x44      # the built-in benchmark
    python data.py --check ROOT                               # what is there, what is missing
    python data.py --preview ROOT --out runs/preview.png      # look at pairs and pose maps
    python data.py --bench ROOT                               # loader speed, batch 32 at 256
    python -m pytest -q tests/test_data.py

Shapes: B batch, S square training size, H W height width, P pose channels (3, or 3 + 18
with heatmaps), K = 18 keypoints.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

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


# ----------------------------------------------------------------------------- the drawn persons

# Saturated garment colours far apart in hue and lightness, so a 64-pixel image keeps them apart.
GARMENT_COLORS = (
    (214, 39, 40), (247, 127, 14), (240, 200, 30), (44, 160, 44), (0, 150, 140), (60, 150, 230),
    (31, 60, 190), (25, 30, 90), (128, 50, 170), (235, 90, 160), (130, 80, 40), (35, 35, 35),
)
WHITE = (250, 250, 250)
SKIN_TONES = ((255, 219, 180), (241, 194, 150), (224, 172, 125), (198, 134, 90), (160, 100, 65), (110, 70, 45))
HAIR_COLORS = ((25, 20, 20), (70, 40, 25), (120, 75, 40), (220, 180, 90), (160, 60, 30), (150, 150, 150))
SHOE_COLORS = ((30, 30, 30), (90, 55, 30), (235, 235, 235), (170, 30, 40))
PATTERNS = ("plain", "stripes", "checks", "dots")


@dataclass(frozen=True)
class Appearance:
    """Everything that stays the same across the views of one clothing item."""

    background: tuple
    skin: tuple
    hair: tuple
    long_hair: bool
    top: tuple  # (colour, pattern, second colour)
    sleeves: str  # none | short | long
    bottom: tuple  # (colour, pattern, second colour)
    legwear: str  # trousers | shorts | skirt | dress (a skirt in the top's garment)
    shoes: tuple


def _contrasting(rng, color) -> tuple:
    """A second pattern colour that stays distinct from `color` after downsampling."""
    options = [c for c in GARMENT_COLORS + (WHITE,) if np.abs(np.subtract(c, color)).sum() > 250]
    return tuple(options[rng.integers(len(options))])


def _garment(rng, avoid=None, plain=0.4) -> tuple:
    choices = [i for i in range(len(GARMENT_COLORS)) if i != avoid]
    index = int(rng.choice(choices))
    pattern = str(rng.choice(PATTERNS, p=[plain] + [(1 - plain) / 3] * 3))
    return GARMENT_COLORS[index], pattern, _contrasting(rng, GARMENT_COLORS[index]), index


def _clothing_kind(rng, name: str, women: bool):
    """Legwear and sleeves from the DeepFashion category in the name, else at random."""
    cat = name.lower().replace("_", "")
    if "dresses" in cat or "rompers" in cat:
        legwear = "dress"
    elif "skirts" in cat or "shorts" in cat:
        legwear = "skirt" if "skirts" in cat else "shorts"
    elif any(k in cat for k in ("pants", "leggings", "denim", "suiting")):
        legwear = "trousers"
    else:
        legwear = str(rng.choice(["trousers", "skirt", "shorts"], p=[0.45, 0.3, 0.25] if women else [0.7, 0.0, 0.3]))
    if any(k in cat for k in ("sweaters", "cardigans", "jackets", "hoodies", "coats", "suiting")):
        sleeves = "long"
    else:
        sleeves = str(rng.choice(["none", "short", "long"], p=[0.2, 0.5, 0.3]))
    return legwear, sleeves


@functools.lru_cache(maxsize=4096)
def sample_appearance(item: str, seed: int = 0) -> Appearance:
    """The deterministic look of one clothing item (independent of the other items)."""
    rng = np.random.default_rng([seed, zlib.crc32(item.encode("utf-8"))])
    women = "women" in item.lower()
    legwear, sleeves = _clothing_kind(rng, item, women)
    top_color, top_pattern, top_second, top_index = _garment(rng)
    bottom_color, bottom_pattern, bottom_second, _ = _garment(rng, avoid=top_index, plain=0.55)
    if legwear == "dress":
        bottom_color, bottom_pattern, bottom_second = top_color, top_pattern, top_second
    tint = rng.integers(-8, 9, size=3)
    background = tuple(int(v) for v in np.clip(rng.integers(226, 246) + tint, 0, 255))
    return Appearance(
        background=background,
        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
        hair=HAIR_COLORS[rng.integers(len(HAIR_COLORS))],
        long_hair=bool(rng.random() < (0.7 if women else 0.1)),
        top=(top_color, top_pattern, top_second),
        sleeves=sleeves,
        bottom=(bottom_color, bottom_pattern, bottom_second),
        legwear=legwear,
        shoes=SHOE_COLORS[rng.integers(len(SHOE_COLORS))],
    )


def _unit(v) -> np.ndarray:
    n = float(np.hypot(*v))
    return np.asarray(v, np.float64) / n if n > 1e-6 else np.array([0.0, 1.0])


def _body_unit(pts: dict, height: float) -> float:
    """The torso length (neck to hip) in pixels, estimated from whatever limbs are visible.
    Foreshortening only shortens a limb, so the second largest estimate is robust."""
    ratios = ((1, 8, 1.0), (1, 11, 1.0), (2, 3, 0.55), (3, 4, 0.5), (5, 6, 0.55), (6, 7, 0.5),
              (8, 9, 0.8), (9, 10, 0.8), (11, 12, 0.8), (12, 13, 0.8), (2, 5, 0.6), (1, 0, 0.4))
    guesses = sorted((float(np.hypot(*(pts[a] - pts[b]))) / r for a, b, r in ratios if a in pts and b in pts),
                     reverse=True)
    unit = guesses[1] if len(guesses) >= 3 else (guesses[0] if guesses else 0.25 * height)
    return float(np.clip(unit, 0.08 * height, 0.9 * height))


@dataclass
class Body:
    """A pose with the gaps a drawing needs filled in, in canvas pixels."""

    unit: float
    down: np.ndarray
    neck: np.ndarray
    shoulders: tuple
    hips: tuple
    arms: list  # [(shoulder, elbow, wrist)] for each arm whose elbow is visible
    legs: list  # [(hip, knee, ankle)]
    head: np.ndarray
    face: bool
    pts: dict


def _torso_points(pts: dict, unit: float, height: float):
    """Neck, shoulders and hips, guessed from their neighbours where missing; None if the
    pose has neither neck nor shoulder to hang a body on."""
    rs, ls, neck = pts.get(2), pts.get(5), pts.get(1)
    across = np.array([0.6 * unit, 0.0])  # a front view: the person's right is the image left
    if rs is None and ls is None:
        if neck is None:
            return None
        rs, ls = neck - across / 2, neck + across / 2
    rs = rs if rs is not None else (2 * neck - ls if neck is not None else ls - across)
    ls = ls if ls is not None else (2 * neck - rs if neck is not None else rs + across)
    neck = neck if neck is not None else (rs + ls) / 2
    rh, lh = pts.get(8), pts.get(11)
    if rh is None and lh is None:  # hips out of the picture: the torso runs off the bottom
        mid = neck + np.array([0.0, max(1.05 * unit, height - neck[1] + 0.3 * unit)])
        rh, lh = mid + (rs - neck) * 0.8, mid + (ls - neck) * 0.8
    rh = rh if rh is not None else lh - (ls - rs) * 0.8
    lh = lh if lh is not None else rh + (ls - rs) * 0.8
    return neck, rs, ls, rh, lh


def body_geometry(keypoints: np.ndarray, size) -> Body | None:
    """Keypoints (18, 2) in the 256x176 frame -> a drawable Body on a canvas of `size` (H, W)."""
    scale = np.array([size[1] / FRAME[1], size[0] / FRAME[0]])
    pts = {j: keypoints[j] * scale for j in np.flatnonzero(~is_missing(keypoints))}
    unit = _body_unit(pts, size[0])
    torso = _torso_points(pts, unit, size[0])
    if torso is None:
        return None
    neck, rs, ls, rh, lh = torso
    down = _unit((rh + lh) / 2 - neck)
    arms = []
    for s, e, w, shoulder in ((2, 3, 4, rs), (5, 6, 7, ls)):
        if e in pts:
            wrist = pts[w] if w in pts else pts[e] + _unit(pts[e] - shoulder) * 0.5 * unit
            arms.append((shoulder, pts[e], wrist))
    legs = []
    for h, k, a, hip in ((8, 9, 10, rh), (11, 12, 13, lh)):
        knee = pts[k] if k in pts else hip + down * 0.85 * unit
        ankle = pts[a] if a in pts else knee + _unit(knee - hip) * 0.85 * unit
        legs.append((hip, knee, ankle))
    face_pts = [pts[j] for j in (14, 15, 16, 17) if j in pts] or [pts[j] for j in (0,) if j in pts]
    head = np.mean(face_pts, axis=0) if face_pts else neck - down * 0.35 * unit
    face = any(j in pts for j in (0, 14, 15))  # no nose and no eyes: a back view
    return Body(unit, down, neck, (rs, ls), (rh, lh), arms, legs, head, face, pts)


def _box(p, r):
    return [float(p[0] - r), float(p[1] - r), float(p[0] + r), float(p[1] + r)]


def _capsule(draw, p, q, r1, r2, fill):
    """A thick tapered segment: radius r1 at p, r2 at q, round ends."""
    across = _unit(q - p)[::-1] * np.array([-1.0, 1.0])  # perpendicular to p -> q
    _poly(draw, [p + across * r1, q + across * r2, q - across * r2, p - across * r1], fill)
    draw.ellipse(_box(p, r1), fill=fill)
    draw.ellipse(_box(q, r2), fill=fill)


@functools.lru_cache(maxsize=256)
def _pattern_tile(pattern: str, period: int) -> np.ndarray:
    """One period x period cell of a pattern, bool: True where the second colour goes."""
    ys, xs = np.mgrid[0:period, 0:period] + 0.5  # (P, P) pixel centres
    half = period / 2
    if pattern == "stripes":
        return ys >= half
    if pattern == "checks":
        return (ys >= half) != (xs >= half)
    if pattern == "dots":
        return (ys - half) ** 2 + (xs - half) ** 2 < (0.3 * period) ** 2
    return np.zeros((period, period), bool)  # plain


def _paint(canvas, garment, body, shapes):
    """Draw `shapes(draw, fill)` in the garment's texture, anchored at the neck so that
    stripes and checks move with the person. A plain garment is drawn straight on the canvas;
    a patterned one through a mask."""
    color, pattern, second = garment
    if pattern == "plain":
        shapes(ImageDraw.Draw(canvas), color)
        return
    mask = Image.new("L", canvas.size, 0)
    shapes(ImageDraw.Draw(mask), 255)
    box = mask.getbbox()
    if box is not None:
        x0, y0, x1, y1 = box
        period = max(4, round(0.45 * body.unit))  # big enough to survive a 64-pixel training image
        tile = _pattern_tile(pattern, period)  # (P, P)
        rows = (np.arange(y0, y1) - round(body.neck[1])) % period  # (h,)
        cols = (np.arange(x0, x1) - round(body.neck[0])) % period  # (w,)
        on = tile[rows[:, None], cols[None, :]]  # (h, w)
        palette = np.array([color, second], np.uint8)  # (2, 3)
        layer = Image.fromarray(palette[on.astype(np.intp)])  # (h, w, 3)
        canvas.paste(layer, (x0, y0), mask.crop(box))


def _widen(a, b, minimum):
    """Spread a pair of points (shoulders, hips) to at least `minimum` apart: side views."""
    mid, gap = (a + b) / 2, b - a
    if np.hypot(*gap) >= minimum:
        return a, b
    across = _unit(gap) if np.hypot(*gap) > 1e-6 else np.array([1.0, 0.0])
    return mid - across * minimum / 2, mid + across * minimum / 2


def _poly(draw, points, fill):
    draw.polygon([(float(x), float(y)) for x, y in points], fill=fill)


def _draw_legs(draw, canvas, body, look):
    u = body.unit
    for hip, knee, ankle in body.legs:
        _capsule(draw, hip, knee, 0.19 * u, 0.14 * u, look.skin)
        _capsule(draw, knee, ankle, 0.14 * u, 0.1 * u, look.skin)
        foot = ankle + body.down * 0.06 * u
        draw.ellipse([foot[0] - 0.15 * u, foot[1] - 0.08 * u, foot[0] + 0.15 * u, foot[1] + 0.08 * u], fill=look.shoes)
    rh, lh = _widen(*body.hips, 0.45 * u)
    waist = [rh - body.down * 0.2 * u, lh - body.down * 0.2 * u]

    def skirt(d, fill):
        out = _unit(lh - rh) * 0.25 * u  # the hem flares out past the hips
        _poly(d, waist + [lh + body.down * 0.95 * u + out, rh + body.down * 0.95 * u - out], fill)

    def legwear(d, fill):
        for hip, knee, ankle in body.legs:
            if look.legwear == "trousers":
                _capsule(d, hip, knee, 0.21 * u, 0.17 * u, fill)
                _capsule(d, knee, ankle, 0.17 * u, 0.13 * u, fill)
            else:  # shorts end halfway down the thigh
                _capsule(d, hip, hip + (knee - hip) * 0.55, 0.21 * u, 0.19 * u, fill)
        _poly(d, waist + [lh, rh], fill)

    if look.legwear in ("skirt", "dress"):
        _paint(canvas, look.top if look.legwear == "dress" else look.bottom, body, skirt)
    else:
        _paint(canvas, look.bottom, body, legwear)


def _draw_upper(draw, canvas, body, look):
    u = body.unit
    _capsule(draw, body.neck, body.head, 0.1 * u, 0.1 * u, look.skin)
    rs, ls = _widen(*body.shoulders, 0.5 * u)
    rh, lh = _widen(*body.hips, 0.45 * u)

    def torso(d, fill):
        _poly(d, (rs, ls, lh, rh), fill)
        for s in (rs, ls):
            d.ellipse(_box(s, 0.13 * u), fill=fill)

    def sleeves(d, fill):
        for shoulder, elbow, wrist in body.arms:
            if look.sleeves == "short":
                _capsule(d, shoulder, shoulder + (elbow - shoulder) * 0.5, 0.15 * u, 0.14 * u, fill)
            else:
                _capsule(d, shoulder, elbow, 0.15 * u, 0.13 * u, fill)
                _capsule(d, elbow, wrist, 0.13 * u, 0.11 * u, fill)

    _paint(canvas, look.top, body, torso)
    for shoulder, elbow, wrist in body.arms:  # bare arms first, sleeves over them
        _capsule(draw, shoulder, elbow, 0.12 * u, 0.1 * u, look.skin)
        _capsule(draw, elbow, wrist, 0.1 * u, 0.08 * u, look.skin)
        draw.ellipse(_box(wrist + _unit(wrist - elbow) * 0.06 * u, 0.09 * u), fill=look.skin)
    if look.sleeves != "none" and body.arms:
        _paint(canvas, look.top, body, sleeves)


def _draw_head(draw, body, look, behind: bool):
    """Long hair behind the body (`behind`), else the head: hair cap and face, or all hair
    for a back view (no nose, no eyes)."""
    u, c, up = body.unit, body.head, -body.down
    r = 0.3 * u
    if behind:
        if look.long_hair:
            across = np.array([-up[1], up[0]])
            bottom = c - up * (np.hypot(*(body.neck - c)) + 0.45 * u)
            corners = [c + across * r, c - across * r, bottom - across * 1.1 * r, bottom + across * 1.1 * r]
            _poly(draw, corners, look.hair)
            draw.ellipse(_box(c, 1.05 * r), fill=look.hair)
        return
    if not body.face:
        draw.ellipse(_box(c, r), fill=look.hair)
        return
    draw.ellipse(_box(c + up * 0.15 * r, r), fill=look.hair)
    face = c - up * 0.1 * r
    if 0 in body.pts:  # turn the face toward the nose: hair shows at the back of a profile
        face = face + np.array([0.3 * (body.pts[0][0] - c[0]), 0.0])
    draw.ellipse(_box(face, 0.85 * r), fill=look.skin)
    for j in (14, 15):
        if j in body.pts:
            draw.ellipse(_box(body.pts[j], max(0.6, 0.035 * u)), fill=(40, 30, 30))


def draw_person(keypoints, look: Appearance, size=(256, 176), supersample: int = 2):
    """One drawn person in one pose, PIL (W, H) RGB, or None for a pose with no torso."""
    height, width = size
    big = (height * supersample, width * supersample)
    body = body_geometry(np.asarray(keypoints, np.float32), big)
    if body is None:
        return None
    canvas = Image.new("RGB", (big[1], big[0]), look.background)
    draw = ImageDraw.Draw(canvas)
    _draw_head(draw, body, look, behind=True)
    _draw_legs(draw, canvas, body, look)
    _draw_upper(draw, canvas, body, look)
    _draw_head(draw, body, look, behind=False)
    # drawing at twice the size and averaging down gives smooth (antialiased) edges
    return canvas.reduce(supersample) if supersample > 1 else canvas


# ----------------------------------------------------------------------------- the benchmark

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
        draw_person(keypoints, sample_appearance(item, seed), size).save(path, quality=95)
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

    Every item id gets one Appearance and is drawn in each of its real poses; pairs are the
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


def parse_size(text: str, flag: str = "--size") -> tuple:
    """'256x176' -> (256, 176), height x width: the one size syntax of every script's flags."""
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip().lower())
    h, w = (int(g) for g in match.groups()) if match else (0, 0)
    if h == 0 or w == 0:
        raise ValueError(f"{flag} {text!r}: expected HxW such as 256x176")
    return h, w


class OneLineParser(argparse.ArgumentParser):
    """argparse for every script of the project: a bad flag is one line `error: ...`, exit 2.

    note: plain argparse prints its whole usage first; the line that says what is wrong is
    easier to see alone (the usage is one `--help` away).
    """

    def error(self, message):
        sys.exit(f"error: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="DeepFashion pairs, pose maps and the built-in benchmark.")
    task = p.add_mutually_exclusive_group(required=True)
    task.add_argument("--synthesize", metavar="OUT", help="draw the built-in benchmark into OUT")
    task.add_argument("--check", metavar="ROOT", help="layout, counts and missing files of a data folder")
    task.add_argument("--preview", metavar="ROOT", help="write a PNG grid of pairs with their pose maps")
    task.add_argument("--bench", metavar="ROOT", help="time the loader")
    p.add_argument("--size", default="256x176", help="benchmark image size HxW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--annotations", help="keypoint CSV (either convention) to draw instead of the bundled one")
    p.add_argument("--max-items", type=int, default=None, help="draw only this many clothing items")
    p.add_argument("--out", default="runs/preview.png", help="PNG path for --preview")
    p.add_argument("--split", choices=SPLITS, default=None, help="split for --preview (test) / --bench (train)")
    p.add_argument("--count", type=int, default=6, help="pairs in the --preview grid")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=20)
    return p


def _run(args) -> int:
    if args.synthesize:
        size = parse_size(args.size)
        counts = synthesize(args.synthesize, size, args.seed, args.annotations, args.max_items)
        print(f"data: wrote {args.synthesize}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    if args.check:
        return check(args.check)
    if args.preview:
        preview(args.preview, args.out, args.split or "test", args.count, args.image_size)
        return 0
    bench(args.bench, args.split or "train", args.image_size, args.batch_size, args.workers, args.batches)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
    except (ValueError, FileNotFoundError, OSError) as err:  # DataError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
