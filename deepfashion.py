"""DeepFashion's files: the three layouts PGPIS code stores its pairs in, and their keypoint conventions.

Pose-guided person image synthesis (PGPIS) is benchmarked on DeepFashion In-shop (Liu et al., CVPR
2016) with OpenPose COCO-18 keypoints (Cao et al., arXiv:1611.08050), paired as in Deformable GAN
(arXiv:1801.00055) and PATN (arXiv:1904.03349) and used since by GFLA, DPTN, NTED, PIDM, PCDM, CFLD
and FPDM. Each of those repositories stores the same data differently; this file reads each layout
and converts its keypoints *once* into poses.py's convention: an (18, 2) float array of (x, y)
pixels in the frame of the 256x176 image, -1 for a missing joint.

  csv   fashion-resize-pairs-{train,test}.csv + fashion-resize-annotation-{train,test}.csv
        (y first, 256x176 frame), images in {train,test}_highres/; also the 'fasion' prefix
        and the older fasion-annotation-*.csv (256x256 frame, 40-pixel border in x).
  nted  {train,test}_pairs.txt (target first, then sources), img/..., one pose/....txt of
        18 rows "x y" per image (256x256 frame with the 40-pixel border), as NTED/PIDM.
  pcdm  {train,test}_data.json, [{"source_image": ..., "target_image": ...}], poses as nted.

In nted and pcdm, image names become the csv convention (img/WOMEN/Dresses/id_00000002/02_1_front.jpg
-> fashionWOMENDressesid0000000202_1front.jpg), so output stems stay unique. Each `index_*` returns
what one split holds as a plain dict (pairs, the file row each came from, keypoints, image files,
the listing read); data.py detects the layout and makes the dataset from it. A malformed or short
row, a pair naming an image without keypoints, or a missing file is a one-line poses.DataError that
names the file, the row and what was expected.

    python data.py --check /data/fashion       # which layout, what is there, what is missing
    python -m pytest -q tests/test_data.py

Shapes: K = 18 keypoints; (x, y) pixels, the files store y first (csv) or x first (nted, pcdm).
"""
from __future__ import annotations

import csv
import functools
import json
import os
import re
from pathlib import Path

import numpy as np

from poses import MISSING, DataError, is_missing

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_ANNOTATIONS = ASSETS / "fasion-annotation-test.csv"  # 4,061 real OpenPose poses
BUNDLED_PAIRS = ASSETS / "fasion-pairs-test.csv"  # the 8,670 standard test pairs

FRAME = (256, 176)  # (H, W): the frame every loader converts keypoints into
BORDER = 40  # the older 256x256 files pad the 176-wide crop by 40 pixels on each side of x


# ----------------------------------------------------------------------------- keypoint files

def _from_file_frame(xy: np.ndarray, border: int) -> np.ndarray:
    """(18, 2) (x, y) as a file stores them -> the 256x176 frame, -1 for missing joints."""
    out = np.array(xy, dtype=np.float32, order="C")  # note: C order, the y-first files arrive transposed
    missing = is_missing(out)
    out[:, 0] -= border
    out[missing | is_missing(out)] = MISSING  # the few joints left of the 176-wide crop
    return out


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
    """name -> (18, 2) (x, y) in the 256x176 frame, from a DeepFashion annotation CSV of either frame.

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
CSV_FILE = re.compile(r"fa(sh|s)ion-(resize-)?(pairs|annotation)-\w+\.csv")


def _first_existing(root: Path, patterns, split: str, what: str) -> Path:
    tried = [pat.format(p=p, s=split) for pat in patterns for p in ("fashion", "fasion")]
    for name in tried:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: csv layout without a {what} file for split '{split}' (looked for {', '.join(tried)})")


def index_csv(root: Path, split: str) -> dict:
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
    return {"layout": "csv", "pairs": pairs, "rows": rows, "keypoints": keypoints, "files": files,
            "listing": f"{pairs_path.name}, {ann_path.name}"}


def _pose_path(root: Path, rel: str) -> Path:
    """NTED keeps `pose/WOMEN/.../02_1_front.txt` beside `img/WOMEN/.../02_1_front.jpg`."""
    parts = Path(rel).parts
    parts = parts[1:] if parts and parts[0] in ("img", "img_highres") else parts
    return (root / "pose").joinpath(*parts).with_suffix(".txt")


def _register(root: Path, rel: str, index: dict, where: str) -> str:
    name = flat_name(rel)
    if name not in index["files"]:
        pose = _pose_path(root, rel)
        if not pose.is_file():
            raise DataError(f"{where}: image '{rel}' has no keypoint file (expected {pose})")
        index["keypoints"][name] = read_pose_txt(pose)
        index["files"][name] = rel
    return name


def index_nted(root: Path, split: str) -> dict:
    path = root / f"{split}_pairs.txt"
    if not path.is_file():
        raise DataError(f"{root}: nted layout without {path.name}")
    index = {"layout": "nted", "pairs": [], "rows": [], "keypoints": {}, "files": {},
             "listing": f"{path.name}, pose/*.txt"}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entries = [e.strip() for e in line.split(",") if e.strip()]
        if not entries:
            continue
        where = f"{path}:{lineno}"
        if len(entries) < 2:
            raise DataError(f"{where}: expected 'target,source[,source...]' (image paths), got {_clip(line)}")
        target, *sources = [_register(root, e, index, where) for e in entries]
        for source in sources:  # note: NTED/PIDM write the *target* first
            index["pairs"].append((source, target))
            index["rows"].append(f"{path}:{lineno}")
    return index


def index_pcdm(root: Path, split: str) -> dict:
    path = root / f"{split}_data.json"
    if not path.is_file():
        raise DataError(f"{root}: pcdm layout without {path.name}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of {{'source_image': ..., 'target_image': ...}}")
    index = {"layout": "pcdm", "pairs": [], "rows": [], "keypoints": {}, "files": {},
             "listing": f"{path.name}, pose/*.txt"}
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not (isinstance(entry, dict) and isinstance(entry.get("source_image"), str)
                and isinstance(entry.get("target_image"), str)):
            raise DataError(f"{where}: expected {{'source_image': path, 'target_image': path}}, "
                            f"got {_clip(str(entry))}")
        source = _register(root, entry["source_image"], index, where)
        target = _register(root, entry["target_image"], index, where)
        index["pairs"].append((source, target))
        index["rows"].append(f"{path}: entry {i}")
    return index
