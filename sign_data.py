"""Sign-language data: real signing poses, PHOENIX-2014T's folder layout, and the signer benchmark.

FPDM scores pose-guided synthesis on a second benchmark, RWTH-PHOENIX-Weather 2014T (German sign
language; Camgoz et al., CVPR 2018): for each video the first frame is the *source* and every
frame's pose a *target*, so a model must redraw the signer, hands included, frame after frame.
Hands are where sign-language generation fails, and where FPDM claims its gain.

The poses: assets/sign/ holds 47 real signing sequences (3,670 frames at 25 fps; 15 PHOENIX-2014T
videos split 5/5/5 train/dev/test as published, 32 Public DGS Corpus sentences split 16/16), in
the `sign50` layout of poses.py (upper body and both hands, (x, y) in PHOENIX's 260x210 frame).
Their licences and sources are in assets/sign/README.md.

The real dataset's layout ("phoenix"), as FPDM's release reads it, one keypoint file per frame:

  ROOT/features/fullFrame-210x260px/{train,dev,test}/VIDEO/images0001.png   (PHOENIX-2014T's tree;
        ROOT/{split}/VIDEO/ also works)
  ROOT/keypoints/{train,dev,test}/VIDEO/images0001.txt   COCO-WholeBody's 133 points, one `x y`
        (or `x y score`) row per point, read with np.loadtxt, 0 0 = missing

`from_wholebody` maps the 133 points to sign50 once: body joints by name, the neck (which COCO
lacks) as the shoulders' midpoint, the hands point for point (COCO-WholeBody orders hands as
OpenPose does). Images are named `{VIDEO}_{frame}` so that names stay unique across videos.

No PHOENIX frame can be downloaded here, so `synthesize_sign` writes a stand-in *in that layout*:
persons.py draws a signer in each real frame; every training sequence is drawn in `looks`
appearances (a random subset of `frames_per_look` of its frames each, plus the first), every test
sequence whole, in a look never used in training. Split by sequence; dev is left out (the
published protocol keeps it for model selection). The same loader then reads the benchmark and a
real copy.

    python data.py --synthesize-sign runs/sign     # or let `train.py --data sign` draw it once
    python data.py --check runs/sign-128x104
    python -m pytest -q tests/test_sign_data.py

Shapes: T frames, K = 50 joints (133 in a COCO-WholeBody file), H W image height and width.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

import persons
from poses import HAND_POINTS, LEFT_HAND, MISSING, RIGHT_HAND, SIGN50, DataError, is_missing, scale_keypoints

SEQUENCES = Path(__file__).resolve().parent / "assets" / "sign"
PHOENIX_IMAGES = Path("features") / "fullFrame-210x260px"  # PHOENIX-2014T's frame folder
SIGN_SPLITS = {"train": "train", "test": "test"}  # the project's split -> the corpus' split
K = len(SIGN50.joint_names)


# ----------------------------------------------------------------------------- the project's CSVs

def read_sequence(path) -> np.ndarray:
    """One sequence file of assets/sign: (T, 50, 2) float32 (x, y) in the 260x210 frame, -1 missing."""
    path = Path(path)
    frames = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    if not rows or rows[0][:2] != ["frame", "j0_x"] or len(rows[0]) != 1 + 2 * K:
        raise DataError(f"{path}: expected a header 'frame,j0_x,j0_y,...,j49_y' ({1 + 2 * K} columns)")
    for lineno, row in enumerate(rows[1:], 3):
        if len(row) != 1 + 2 * K:
            raise DataError(f"{path}:{lineno}: expected {1 + 2 * K} values (frame, then x y of 50 joints), "
                                f"got {len(row)}")
        try:
            frames.append(np.array(row[1:], dtype=np.float32).reshape(K, 2))  # (50, 2)
        except ValueError:
            raise DataError(f"{path}:{lineno}: keypoints must be numbers") from None
    out = np.stack(frames)  # (T, 50, 2)
    out[is_missing(out)] = MISSING
    return out


def sequence_index(root=SEQUENCES) -> list[dict]:
    """assets/sign/index.csv as [{file, corpus, split, frames}], in file order."""
    with open(Path(root) / "index.csv", newline="", encoding="utf-8") as f:
        return [{**row, "frames": int(row["frames"])} for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------- COCO-WholeBody

# COCO-WholeBody (Jin et al., ECCV 2020): 17 COCO body points, 6 foot, 68 face, 21 left hand
# (91-111), 21 right hand (112-132). sign50's body joints by their COCO index:
_COCO_BODY = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9}  # sign50 joint -> COCO body index
_COCO_SHOULDERS = (5, 6)  # COCO has no neck: it is the shoulders' midpoint
_WB_LEFT_HAND, _WB_RIGHT_HAND = 91, 112


def from_wholebody(points) -> np.ndarray:
    """(133, 2 or 3) COCO-WholeBody points (0 0 = missing, a score column ignored) -> (50, 2)."""
    pts = np.asarray(points, dtype=np.float32)[:, :2]  # (133, 2)
    missing = (pts <= 0).all(axis=1)  # note: the release writes 0 0 for an undetected point
    out = np.full((K, 2), MISSING, np.float32)
    for j, c in _COCO_BODY.items():
        if not missing[c]:
            out[j] = pts[c]
    if not missing[list(_COCO_SHOULDERS)].any():
        out[1] = pts[list(_COCO_SHOULDERS)].mean(axis=0)
    for ours, theirs in ((LEFT_HAND, _WB_LEFT_HAND), (RIGHT_HAND, _WB_RIGHT_HAND)):
        block = pts[theirs:theirs + HAND_POINTS].copy()  # (21, 2)
        block[missing[theirs:theirs + HAND_POINTS]] = MISSING
        out[ours:ours + HAND_POINTS] = block
    return out


def to_wholebody(keypoints) -> np.ndarray:
    """(50, 2) -> (133, 2) with 0 0 for every point sign50 lacks (the neck is dropped: COCO has none)."""
    kp = np.asarray(keypoints, dtype=np.float32)
    out = np.zeros((133, 2), np.float32)
    for j, c in _COCO_BODY.items():
        out[c] = kp[j]
    for ours, theirs in ((LEFT_HAND, _WB_LEFT_HAND), (RIGHT_HAND, _WB_RIGHT_HAND)):
        out[theirs:theirs + HAND_POINTS] = kp[ours:ours + HAND_POINTS]
    out[(out < 0).any(axis=1)] = 0.0
    return out


def read_wholebody_txt(path) -> np.ndarray:
    """One per-frame keypoint file (133 rows `x y [score]`, or the same numbers on one line) -> (50, 2)."""
    try:
        values = np.loadtxt(path, dtype=np.float32, ndmin=1).reshape(-1)
    except ValueError as err:
        raise DataError(f"{path}: expected numbers, 133 rows 'x y [score]' ({err})") from None
    for columns in (2, 3):
        if values.size == 133 * columns:
            return from_wholebody(values.reshape(133, columns))  # (133, C)
    raise DataError(f"{path}: expected 133 COCO-WholeBody points (266 or 399 numbers), got {values.size}")


# ----------------------------------------------------------------------------- the phoenix layout

def is_phoenix(root) -> bool:
    return (Path(root) / "keypoints").is_dir() and any((Path(root) / "keypoints" / s).is_dir()
                                                       for s in ("train", "dev", "test"))


def image_dir(root, split: str) -> Path:
    root = Path(root)
    for folder in (root / PHOENIX_IMAGES / SIGN_SPLITS[split], root / SIGN_SPLITS[split]):
        if folder.is_dir():
            return folder
    raise DataError(f"{root}: no frame folder for split '{split}' (looked for {PHOENIX_IMAGES}/"
                        f"{SIGN_SPLITS[split]}/ and {SIGN_SPLITS[split]}/)")


def _frame_size(root, split: str, videos: dict, files: dict) -> tuple:
    """(H, W) of the split's frames: the keypoints are pixels of them (PHOENIX's 260x210 if unreadable)."""
    try:
        first = next(iter(videos.values()))[0]
        folder = image_dir(root, split)
        path = next(p for p in (folder / files[first]).parent.glob(Path(files[first]).name + ".*"))
        with Image.open(path) as im:
            return im.height, im.width
    except (StopIteration, DataError, OSError):
        return SIGN50.frame


def index_phoenix(root, split: str) -> dict:
    """What a split holds: pairs (first frame -> every frame, video by video), keypoints name ->
    (50, 2) in the frames' pixels, files name -> image path (without suffix) under image_dir,
    videos name -> [frame names in order], frame (H, W) and the listing read."""
    root = Path(root)
    folder = root / "keypoints" / SIGN_SPLITS[split]
    if not folder.is_dir():
        raise DataError(f"{root}: phoenix layout without keypoints/{SIGN_SPLITS[split]}/")
    keypoints, files, videos, pairs, rows = {}, {}, {}, [], []
    for video in sorted(p for p in folder.iterdir() if p.is_dir()):
        names = []
        for txt in sorted(video.glob("*.txt")):
            name = f"{video.name}_{txt.stem}"
            keypoints[name] = read_wholebody_txt(txt)
            files[name] = f"{video.name}/{txt.stem}"
            names.append(name)
        if names:
            videos[video.name] = names
            pairs += [(names[0], n) for n in names]  # FPDM's protocol: the first frame is the source
            rows += [str(folder / video.name / f"{Path(files[n]).name}.txt") for n in names]
    return {"layout": "phoenix", "pairs": pairs, "rows": rows, "keypoints": keypoints, "files": files, "videos": videos,
            "frame": _frame_size(root, split, videos, files), "listing": f"keypoints/{SIGN_SPLITS[split]}/*/*.txt"}


# ----------------------------------------------------------------------------- the signer benchmark

def _write_frame(out: Path, split: str, video: str, i: int, kp260: np.ndarray, look, size) -> None:
    """One benchmark frame: its keypoints file (in the image's pixels, as a real copy has them)
    and the drawn signer, drawn from the keypoints the loader will read back (neck = midpoint)."""
    kp = from_wholebody(to_wholebody(scale_keypoints(kp260, SIGN50.frame, size)))  # (50, 2) in H x W
    stem = f"images{i + 1:04d}"
    (out / "keypoints" / split / video).mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "keypoints" / split / video / f"{stem}.txt", to_wholebody(kp), fmt="%.2f")
    image = persons.draw_signer(scale_keypoints(kp, size, SIGN50.frame), look, size)
    (out / PHOENIX_IMAGES / split / video).mkdir(parents=True, exist_ok=True)
    image.save(out / PHOENIX_IMAGES / split / video / f"{stem}.png")


def _drawable(kp: np.ndarray) -> bool:
    """persons.draw_signer needs a neck or both shoulders."""
    missing = is_missing(kp)
    return not missing[1] or not missing[[2, 5]].any()


def _videos(entries, split: str, looks: int, frames_per_look: int, seed: int):
    """[(video name, look, [(frame index, keypoints)])] of one split."""
    rng = np.random.default_rng(seed)
    out = []
    for entry in entries:
        seq = read_sequence(SEQUENCES / entry["file"])  # (T, 50, 2)
        usable = [i for i in range(len(seq)) if _drawable(seq[i])]
        stem = Path(entry["file"]).stem
        for k in range(looks if split == "train" else 1):
            picks = usable if split == "test" else sorted(
                {usable[0], *rng.choice(usable[1:], min(frames_per_look, len(usable) - 1), replace=False)})
            look = persons.sample_signer_look(f"{split}/{stem}/{k}", seed)  # a test look is never a training one
            out.append((f"{stem}_look{k:02d}", look, [(i, seq[i]) for i in picks]))
    return out


def _draw_jobs(jobs) -> int:
    """Draw [(out, split, video, frame index, keypoints, look, size)]; run in a worker process."""
    for job in jobs:
        _write_frame(*job)
    return len(jobs)


def synthesize_sign(out_dir, size=(128, 104), seed=0, looks=40, frames_per_look=8, max_sequences=None,
                    workers=2) -> dict:
    """Draw the signer benchmark into `out_dir` in the phoenix layout; returns counts. Deterministic for a
    seed; `workers` processes draw (the result does not depend on it)."""
    start = time.perf_counter()
    out, counts = Path(out_dir), {}
    height, width = int(size[0]), int(size[1])
    for split in SIGN_SPLITS:
        entries = [e for e in sequence_index() if e["split"] == split][: max_sequences or None]
        videos = _videos(entries, split, looks, frames_per_look, seed)
        persons.draw_all(_draw_jobs, [(out, split, video, i, kp, look, (height, width)) for video, look, frames
                                      in videos for i, kp in frames], workers)
        counts.update({f"sequences_{split}": len(entries), f"videos_{split}": len(videos),
                       f"frames_{split}": sum(len(f) for _, _, f in videos)})
    counts["seconds"] = round(time.perf_counter() - start, 2)
    meta = {"size": [height, width], "seed": seed, "looks": looks, "frames_per_look": frames_per_look,
            "counts": counts}
    (out / "benchmark.json").write_text(json.dumps(meta, indent=1))  # written last: marks a finished run
    return counts
