"""Streaming: turning a pose stream into frames with one fixed noise, and measuring flicker.

A live system (sign-language video, AR/VR, the browser demo) draws one frame per incoming pose. Three
things make that a stream rather than many unrelated images:

  1. the source is encoded ONCE (its tokens are reused by every frame);
  2. ONE noise for every frame: the noise picks which of the many plausible images is drawn (which
     folds, which shade); fresh noise per frame would draw another one each time and the person
     would shimmer even while the pose stands still. Reseeding before each frame also fixes DDPM's
     per-step noise, so an identical pose gives an identical frame;
  3. each frame is timed as a viewer sees it, from keypoints to image: pose drawing, the network
     (conditions and sampling loop) and VAE decoding.

Flicker is measured so that it can fail (a frozen output must not score well):
  - `repeat_change`: the output change between frames of the SAME pose; 0 with one fixed noise;
  - `video_flicker`: with a ground-truth video, the distance of the generated frame-to-frame change
    from the real one, |(g[t+1] - g[t]) - (r[t+1] - r[t])|; a frozen output scores the real motion,
    a shimmering one its shimmer, the true video 0. Both report their worst frame.

Pose sequences are CSV files, one frame a row of 36 numbers x0,y0,...,x17,y17 (OpenPose COCO-18; or 100
numbers, the 50 joints of the upper body and hands of poses.SIGN50; -1 or an empty / NaN cell for a missing
joint), optionally a header line and a `# fps=25` line. A row without
any joint inside its frame is an error naming the row, not a blank frame.

A library file (imports cli, data, metrics, poses and pipeline only), used by `python sample.py --source IMG --poses CSV`
and `python demo.py`; tests: python -m pytest -q tests/test_sample.py tests/test_demo.py

Papers: RPFM (Jeong et al., arXiv 2505.03562) for the live use; flow matching (Lipman et al.,
arXiv 2210.02747). Shape letters: T frames, H W image size, h w latent size, N source tokens, D width.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cli
import data
import metrics
import poses
import pipeline
from pipeline import Generator, Sampling

JOINTS = len(poses.KEYPOINT_NAMES)  # 18, OpenPose COCO-18
SIGN_JOINTS = len(poses.SIGN50.joint_names)  # 50, upper body and both hands
# A joint this far outside its frame (a fraction of the frame's size) is a wrong row, not a person
# half out of the picture: rows with no joint inside are rejected, joints beyond the margin dropped.
OUTSIDE_MARGIN = 0.5
FPS_LINE = re.compile(r"#\s*fps\s*[=:]\s*([0-9.eE+-]+)\s*$")
MAX_FPS = 100.0  # GIF frame durations are whole milliseconds and browsers slow anything faster


# ----------------------------------------------------------------------------------------------
# Pose sequences: reading, checking, clamping, drawing
# ----------------------------------------------------------------------------------------------

@dataclass
class PoseSequence:
    frames: list            # (K, 2) float32 (K = 18, or 50 with hands) (x, y) in `frame_hw`, -1 missing
    fps: float | None       # from a `# fps=N` line, None if the file has none


def check_fps(fps, where: str) -> float:
    """A frame rate as a number in (0, MAX_FPS]; else a ValueError naming `where`."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not (0 < value <= MAX_FPS):  # note: also catches NaN
        raise ValueError(f"{where} {fps!r}: expected frames per second above 0 and at most {MAX_FPS:g}")
    return value


def read_pose_csv(path, frame_hw=data.FRAME, what: str = "--poses") -> PoseSequence:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not a text CSV file") from None
    return parse_pose_csv(text, str(p), frame_hw)


def parse_pose_csv(text: str, name: str, frame_hw=data.FRAME) -> PoseSequence:
    """The frames of a pose CSV's text; a bad row is a ValueError naming `name` and the row."""
    frames, fps = [], None
    for row_no, line in enumerate(text.splitlines(), start=1):
        match = FPS_LINE.match(line.strip())
        if match:
            fps = check_fps(match.group(1), f"{name} row {row_no}: fps")
            continue
        cells = [c.strip() for c in next(csv.reader([line]), [])]
        if not any(cells) or line.lstrip().startswith("#"):
            continue  # blank line or comment
        if not frames and not any(_is_number(c) for c in cells if c):
            continue  # a header of names
        frames.append(parse_pose_row(cells, f"{name} row {row_no}", frame_hw))
    if not frames:
        raise ValueError(f"{name}: no pose rows found (expected rows of 36 numbers x0,y0,...,x17,y17; or 100 with hands)")
    return PoseSequence(frames, fps)


def parse_pose_row(cells: list, where: str, frame_hw) -> np.ndarray:
    """36 (or 100) cells -> (18, 2) (or (50, 2)) (x, y); empty, NaN and negative cells are missing joints."""
    sizes = (2 * JOINTS, 2 * SIGN_JOINTS)
    if len(cells) not in sizes or not all(c == "" or _is_number(c) for c in cells):
        raise ValueError(f"{where}: expected 36 numbers (x, y of the 18 OpenPose joints) or 100 (the 50 joints "
                         f"of the upper body and hands), got {len(cells)} values"
                         f"{'' if len(cells) not in sizes else ', some not numbers'}")
    kp = np.array([float(c) if c else math.nan for c in cells], np.float64).reshape(-1, 2)  # (K, 2)
    return checked_keypoints(kp, where, frame_hw)


def checked_keypoints(kp: np.ndarray, where: str, frame_hw) -> np.ndarray:
    """NaN / inf / negative -> missing; far outside the frame -> missing; none left -> ValueError."""
    kp = np.asarray(kp, np.float64).reshape(-1, 2)  # (K, 2)
    h, w = frame_hw
    bad = ~np.isfinite(kp).all(1) | (kp < 0).any(1)
    far = (kp[:, 0] > w * (1 + OUTSIDE_MARGIN)) | (kp[:, 1] > h * (1 + OUTSIDE_MARGIN))
    inside = ~bad & (kp[:, 0] <= w - 1) & (kp[:, 1] <= h - 1)
    if not inside.any():
        raise ValueError(f"{where}: no joint inside the {h}x{w} frame (all missing, NaN or outside); "
                         f"expected x in 0..{w - 1}, y in 0..{h - 1}")
    out = clamp_keypoints(np.where(bad[:, None], 0, kp), frame_hw)  # a little outside: onto the edge
    out[bad | far] = poses.MISSING
    return out.astype(np.float32)


def clamp_keypoints(kp, frame_hw) -> np.ndarray:
    """(K, 2) joints moved onto the frame's nearest edge (a joint dragged outside it stays visible)."""
    h, w = frame_hw
    kp = np.asarray(kp, np.float64).reshape(-1, 2)  # (K, 2)
    return np.stack([kp[:, 0].clip(0, w - 1), kp[:, 1].clip(0, h - 1)], 1).astype(np.float32)  # (K, 2)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def interpolate_poses(keyframes: list, between: int) -> list:
    """A smooth loop through `poses`: `between` frames from each to the next, back to the first.
    A joint missing at either end of a step stays missing during it."""
    frames = []
    for a, b in zip(keyframes, keyframes[1:] + keyframes[:1]):
        gone = poses.is_missing(a) | poses.is_missing(b)
        for i in range(between):
            kp = (a + (b - a) * (i / between)).astype(np.float32)  # (K, 2)
            kp[gone] = poses.MISSING
            frames.append(kp)
    return frames


def pose_tensor(kp, size: int, frame_hw, device) -> torch.Tensor:
    pose = poses.render_pose(kp, size, size, frame=frame_hw)  # (H, W, 3) uint8
    return torch.from_numpy(pose).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)  # (1, 3, H, W)


def source_tensor(img: Image.Image, size: int, device, crop: bool = True) -> torch.Tensor:
    """A photo as the model saw its sources in training (data.PairDataset.load_image): a padded square
    DeepFashion copy cropped to the 176/256 person (`crop`), stretched to size x size, in [-1, 1]."""
    img = img.convert("RGB")
    if crop and img.width == img.height:
        keep = round(img.width * data.FRAME[1] / data.FRAME[0])
        img = img.crop(((img.width - keep) // 2, 0, (img.width - keep) // 2 + keep, img.height))
    img = img.resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()  # (3, H, W)
    return (x / 127.5 - 1).unsqueeze(0).to(device)  # (1, 3, H, W)


def read_image(blob: bytes, where: str) -> Image.Image:
    """Bytes of an uploaded photo -> a PIL image; anything PIL cannot read is a ValueError naming it."""
    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
    except Exception:  # PIL raises OSError, SyntaxError, ValueError ... for junk
        raise ValueError(f"{where}: not an image PIL can read (expected a PNG or JPEG photo)") from None
    if min(img.size) < 2:
        raise ValueError(f"{where}: a {img.width}x{img.height} image is too small for a photo")
    return img


# ----------------------------------------------------------------------------------------------
# Live generation: what stays fixed during a stream, and one timed frame per pose
# ----------------------------------------------------------------------------------------------

@dataclass
class Frame:
    image: torch.Tensor   # (1, 3, H, W) in [-1, 1]
    pose: torch.Tensor    # (1, 3, H, W) in [0, 1]
    ms: dict = field(default_factory=dict)  # pose drawing, network, decoding


@dataclass
class Live:
    """The model, the encoded source, the one noise and the settings of one stream."""
    gen: Generator
    source: torch.Tensor   # (1, 3, H, W)
    tokens: torch.Tensor   # (1, N, D)
    noise: torch.Tensor    # (1, C, h, w)
    frame_hw: tuple        # the keypoints' frame, (H, W)
    sampling: Sampling
    precision: str = "auto"
    seed: int = 0
    source_kp: torch.Tensor | None = None  # (1, K, 2) the source's pose in the S x S frame (missing: not known)
    part_colours: tuple | None = None  # source_paint "mean": its part colours, read once; else None (the warp reads the source)

    @classmethod
    @torch.inference_mode()
    def start(cls, gen: Generator, source, frame_hw, sampling: Sampling, precision="auto", seed=0,
              source_keypoints=None) -> "Live":
        """Encode the source once and draw the stream's one noise (on the CPU: the same on any device).
        source_keypoints: the source photo's pose in frame_hw, for a UNet that takes the pose painted in
        the source's colours; None (an uploaded photo) paints nothing and the look comes from the tokens."""
        with pipeline.autocast_for(precision, source.device):
            tokens = gen.unet.encode_source(source)  # (1, N, D)
        noise = gen.noise(1, "cpu", torch.Generator().manual_seed(seed)).to(source.device)  # (1, C, h, w)
        live = cls(gen, source, tokens, noise, tuple(frame_hw), sampling, precision, seed)
        if source_keypoints is not None:
            kp = torch.from_numpy(live.to_image_frame(source_keypoints))  # (K, 2) in the S x S frame
            live.source_kp = kp[None].to(source.device)  # (1, K, 2)
            if gen.unet.config.source_colours and gen.unet.config.source_paint == "mean":  # read once, like the tokens
                live.part_colours = poses.source_part_colours(source, live.source_kp)  # (1, L, 3), (1, L)
        return live

    def to_image_frame(self, keypoints) -> np.ndarray:
        """(K, 2) keypoints in frame_hw -> the S x S frame the network draws in."""
        return poses.scale_keypoints(keypoints, self.frame_hw, (self.gen.image_size,) * 2)  # (K, 2)

    def keypoints(self, target_kp) -> tuple:
        """(source, target) keypoints (1, K, 2) in the S x S frame, as pipeline.build_cond takes them."""
        target = torch.from_numpy(self.to_image_frame(target_kp))[None].to(self.source.device)  # (1, K, 2)
        unknown = torch.full_like(target, poses.MISSING)  # an uploaded photo: no pose, nothing painted
        return (unknown if self.source_kp is None else self.source_kp), target

    @torch.inference_mode()
    def frame(self, keypoints, model=None) -> Frame:
        """One frame for (K, 2) keypoints in `frame_hw`; `model` wraps the UNet (e.g. to count NFE)."""
        gen, device = self.gen, self.source.device
        timer = pipeline.PhaseTimer(device)  # CUDA synchronised before every clock read
        with timer("pose"):
            pose = pose_tensor(keypoints, gen.image_size, self.frame_hw, device)  # (1, 3, H, W)
        torch.manual_seed(self.seed)  # the same DDPM step noise for every frame (see the docstring)
        with pipeline.autocast_for(self.precision, device):
            with timer("network"):
                cond = pipeline.build_cond(gen.unet, gen.fusion, self.source, pose, self.tokens,
                                           self.keypoints(keypoints), self.part_colours)
                s = self.sampling
                z = pipeline.sample_latents(gen.process, model or gen.unet, self.noise, cond, s.steps,
                                            s.w_src, s.w_fus, s.sampler)  # (1, C, h, w)
            with timer("decode"):
                image = gen.vae.decode_latents(z.float()).clamp(-1, 1).float()  # (1, 3, H, W)
        return Frame(image, pose, {k: 1000 * v for k, v in timer.seconds.items()})


@torch.inference_mode()
def play(live: Live, keyframes: list, warmup: int = 2, desc: str = "[stream] frames") -> dict:
    """One timed frame per pose, in order, at batch 1: images (3, H, W) in [-1, 1], pose maps (3, H, W)
    in [0, 1], seconds per frame (pose drawing, sampling loop, VAE decoding), the NFE per frame, and
    the first pose drawn once more after the stream (with one fixed noise its frame must come back)."""
    for _ in range(warmup):  # untimed: the first calls allocate and (with --compile) compile
        live.frame(keyframes[0])
    counter = pipeline.CountingModel(live.gen.unet, 1)
    images, pose_maps, seconds = [], [], []
    for kp in cli.progress(keyframes, desc=desc):
        counter.rows = 0
        frame = live.frame(kp, counter)
        seconds.append(sum(frame.ms.values()) / 1000)
        images.append(frame.image[0].cpu())  # (3, H, W)
        pose_maps.append(frame.pose[0, :3].cpu())  # (3, H, W)
    again = live.frame(keyframes[0]).image[0].cpu()  # (3, H, W)
    return {"images": images, "poses": pose_maps, "seconds": seconds, "nfe": counter.nfe, "again": again}


# ----------------------------------------------------------------------------------------------
# Flicker: measures that a frozen or shimmering output fails
# ----------------------------------------------------------------------------------------------

def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def repeat_change(images: list, keypoints: list) -> dict:
    """Output change (mean abs, images on a [0, 1] scale) between each frame and the first earlier frame
    of the same pose: 0 with one fixed noise; anything else is flicker no pose explains.
    images: (3, H, W) in [-1, 1]; keypoints: (K, 2), one per image."""
    first, changes = {}, []
    for i, kp in enumerate(keypoints):
        key = np.asarray(kp, np.float32).tobytes()
        if key in first:
            changes.append((_mean_abs(images[i], images[first[key]]) / 2, i))  # /2: [-1, 1] -> [0, 1]
        else:
            first[key] = i
    if not changes:
        return {"repeat_pairs": 0, "repeat_change": None, "repeat_change_max": None, "repeat_worst_frame": None}
    worst = max(changes)
    return {"repeat_pairs": len(changes), "repeat_change": float(np.mean([c for c, _ in changes])),
            "repeat_change_max": worst[0], "repeat_worst_frame": worst[1]}


def video_flicker(generated: list, real: list) -> dict:
    """How far the generated frame-to-frame change is from the real video's, mean abs on a [0, 1] scale:
    metrics.temporal_error, mean over t of |(g[t+1] - g[t]) - (r[t+1] - r[t])|. The true video scores 0;
    a frozen output scores the real motion, a shimmering one its shimmer. Frames: (3, H, W) in [-1, 1]."""
    if len(generated) != len(real) or len(real) < 2:
        raise ValueError(f"video_flicker: expected two lists of the same length >= 2, got "
                         f"{len(generated)} generated and {len(real)} real frames")
    to01 = [(torch.stack(frames).float() + 1) / 2 for frames in (generated, real)]  # (T, 3, H, W) each
    err = metrics.temporal_error(to01[0].clamp(0, 1), to01[1].clamp(0, 1))
    return {"flicker_vs_real": err["mean"], "flicker_vs_real_max": err["worst"],
            "flicker_worst_frame": err["worst_step"] + 1,  # the frame whose change from the previous is worst
            "real_change": err["real_change"]}


def consecutive_change(images: list) -> float:
    """Mean abs change between consecutive output frames ([0, 1] scale): the motion drawn, flicker
    included; a description, not a flicker figure (a frozen output scores 0)."""
    if len(images) < 2:
        return 0.0
    return float(np.mean([_mean_abs(a, b) / 2 for a, b in zip(images, images[1:])]))
