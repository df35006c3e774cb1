"""Keypoint layouts and pose maps: which joints a pose has, how they connect, and how they are drawn.

A pose reaches the networks as a picture: the OpenPose skeleton (Cao et al., arXiv:1611.08050),
every limb a coloured line and every joint a dot, drawn at the training size. The colours carry
which limb is which (a left arm is a different colour from a right arm), so a mirrored image must
also swap its left and right joints (`Layout.flip_perm`), or the colours would lie.

Two layouts, told apart by their number of joints K:

  coco18  OpenPose COCO-18, the whole body (DeepFashion and every PGPIS paper): 17 limbs,
          18 joints, OpenPose's 18 colours, keypoints in the 256x176 photo frame.
  sign50  Upper body and both hands (sign language, FPDM's PHOENIX-2014T experiment):
          OpenPose BODY_25's first eight joints (nose, neck, shoulders, elbows, wrists), drawn
          with COCO-18's colours for the same limbs, then 21 points per hand (8-28 the left
          hand, 29-49 the right, OpenPose/MediaPipe hand order: 0 wrist, 1-4 thumb, 5-8 index,
          9-12 middle, 13-16 ring, 17-20 little finger, knuckle to tip), each hand's 20 bones
          drawn with one colour per finger, as OpenPose and FPDM's sign code draw hands;
          keypoints in PHOENIX's 260x210 frame. "Left" is the signer's left.

Keypoints inside the code are a (K, 2) float array of (x, y) pixels in the frame of the image
they belong to, -1 for a missing joint (any negative coordinate counts as missing); a missing
joint and every bone touching it are simply not drawn, so a hand out of view is absent.

    render_pose(keypoints, 32, 32, frame=(256, 176))   # (32, 32, 3) uint8 skeleton
    pose_heatmaps(keypoints, 32, 32)                     # (K, 32, 32) one Gaussian per joint
    python -m pytest -q tests/test_poses.py

Shapes: K joints (18 or 50), H W the height and width drawn at.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

MISSING = -1.0


class DataError(ValueError):
    """Bad or missing data; the message names the file (and row) and what was expected. Every
    reader of dataset files raises it (deepfashion.py, sign_data.py, data.py); the command lines
    print it as one line `error: ...`."""

LIMB_WIDTH = 6 / 256  # of the image height: 6 px at 256, 2 px at 64
JOINT_RADIUS = 4 / 256  # OpenPose draws 4-pixel joints at 256
HAND_WIDTH = 2 / 256  # finger bones are thinner than limbs: 2 px at 256, 1 px below 128
HEATMAP_SIGMA = 6 / 256  # sigma = 6 px at 256, as PATN/GFLA's cords_to_map


@dataclass(frozen=True)
class Layout:
    """One keypoint convention: its joints, bones (with colours and widths) and file frame."""

    name: str
    joint_names: tuple
    bones: tuple  # ((a, b), ...): joint pairs drawn as lines, in drawing order
    bone_colors: tuple  # one RGB per bone
    bone_widths: tuple  # one fraction of the image height per bone
    joint_colors: tuple  # one RGB per joint, None: no dot (finger joints are too small)
    frame: tuple  # (H, W) of the frame the dataset files give keypoints in

    @property
    def flip_perm(self) -> tuple:
        """joint i of a mirrored pose is joint flip_perm[i] of the original (left <-> right)."""
        return tuple(self.joint_names.index(_mirror_name(n)) for n in self.joint_names)


def _mirror_name(name: str) -> str:
    return {"r_": "l_", "l_": "r_"}.get(name[:2], name[:2]) + name[2:]


# ----------------------------------------------------------------------------- COCO-18

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
COCO18 = Layout("coco18", KEYPOINT_NAMES, LIMBS, POSE_COLORS[:len(LIMBS)], (LIMB_WIDTH,) * len(LIMBS),
                POSE_COLORS, frame=(256, 176))
FLIP_PERM = COCO18.flip_perm

# ----------------------------------------------------------------------------- upper body + hands

HAND_POINTS = 21
LEFT_HAND, RIGHT_HAND = 8, 8 + HAND_POINTS  # first joint of each hand block
FINGERS = ("thumb", "index", "middle", "ring", "little")
MIDDLE_KNUCKLE = 9  # hand point 9: the centre of sign-language work's Hand SSIM crop
# A hand's 20 bones: wrist to each finger's knuckle, then knuckle to tip, finger by finger.
HAND_BONES = tuple(pair for f in range(5) for pair in
                   ((0, 1 + 4 * f), (1 + 4 * f, 2 + 4 * f), (2 + 4 * f, 3 + 4 * f), (3 + 4 * f, 4 + 4 * f)))
# One colour per finger, hues spread around the wheel as OpenPose's hand drawing spreads them;
# both hands alike (the arm's colour already tells which hand is which).
FINGER_COLORS = tuple(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(f / 5, 1.0, 1.0)) for f in range(5))

_BODY8 = KEYPOINT_NAMES[:8]
_SIGN_NAMES = _BODY8 + tuple(f"{side}_hand{i}" for side in ("l", "r") for i in range(HAND_POINTS))
# The upper body's six limbs and neck-nose keep the colours COCO-18 gives the same limbs.
_BODY_LIMBS = tuple(i for i, (a, b) in enumerate(LIMBS) if a < 8 and b < 8)
_SIGN_BONES = tuple(LIMBS[i] for i in _BODY_LIMBS) + tuple(
    (start + a, start + b) for start in (LEFT_HAND, RIGHT_HAND) for a, b in HAND_BONES)
_SIGN_COLORS = tuple(POSE_COLORS[i] for i in _BODY_LIMBS) + tuple(
    FINGER_COLORS[k // 4] for _ in range(2) for k in range(len(HAND_BONES)))
SIGN50 = Layout("sign50", _SIGN_NAMES, _SIGN_BONES, _SIGN_COLORS,
                (LIMB_WIDTH,) * len(_BODY_LIMBS) + (HAND_WIDTH,) * (2 * len(HAND_BONES)),
                POSE_COLORS[:8] + (None,) * (2 * HAND_POINTS), frame=(260, 210))

LAYOUTS = {len(layout.joint_names): layout for layout in (COCO18, SIGN50)}


def layout_of(keypoints) -> Layout:
    """The layout of a (K, 2) keypoint array, told by K (18 or 50)."""
    k = int(np.asarray(keypoints).size // 2)
    if k not in LAYOUTS:
        raise ValueError(f"keypoints: expected 18 (COCO-18) or 50 (upper body + hands) joints, got {k}")
    return LAYOUTS[k]


# ----------------------------------------------------------------------------- keypoint arithmetic

def is_missing(keypoints: np.ndarray) -> np.ndarray:
    """(..., K, 2) -> (..., K) bool: a joint with a negative coordinate is missing."""
    return (np.asarray(keypoints) < 0).any(axis=-1)


def scale_keypoints(keypoints, src_frame, dst_frame) -> np.ndarray:
    """Map (K, 2) (x, y) keypoints from an (h, w) frame to another; x and y separately."""
    kp = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)  # (K, 2)
    scale = np.array([dst_frame[1] / src_frame[1], dst_frame[0] / src_frame[0]], np.float32)
    out = kp * scale  # note: no half-pixel shift, so x = 0 stays 0 and never turns "missing"
    out[is_missing(kp)] = MISSING
    return out


def flip_keypoints(keypoints, width: int) -> np.ndarray:
    """Mirror (K, 2) keypoints in an image `width` pixels wide, swapping left and right.
    A joint beyond the right edge lands left of 0 and so counts as missing, as one beyond
    the left edge already did."""
    kp = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)  # (K, 2)
    out = kp[list(layout_of(kp).flip_perm)].copy()  # (K, 2)
    valid = ~is_missing(out)
    out[valid, 0] = (width - 1) - out[valid, 0]  # pixel i goes to pixel width-1-i
    return out


# ----------------------------------------------------------------------------- pose maps

def render_pose(keypoints_xy, height: int, width: int, frame=None) -> np.ndarray:
    """The OpenPose-style RGB skeleton, uint8 (H, W, 3): bones, then joints on top.

    `frame=(fh, fw)`: the keypoints are in an fh x fw frame and get scaled to H x W
    (x and y separately); None: they already are in the H x W frame. Missing joints and
    every bone touching one are skipped. The layout (COCO-18 or upper body + hands) is told
    by the number of joints.
    """
    kp = np.asarray(keypoints_xy, dtype=np.float32).reshape(-1, 2)  # (K, 2)
    layout = layout_of(kp)
    if frame is not None:
        kp = scale_keypoints(kp, frame, (height, width))
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    missing = is_missing(kp)
    for (a, b), color, frac in zip(layout.bones, layout.bone_colors, layout.bone_widths):
        if not (missing[a] or missing[b]):
            draw.line([*map(float, kp[a]), *map(float, kp[b])], fill=color, width=max(1, round(height * frac)))
    radius = max(1, round(height * JOINT_RADIUS))
    for j in np.flatnonzero(~missing):
        if layout.joint_colors[j] is not None:
            x, y = map(float, kp[j])
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=layout.joint_colors[j])
    return np.array(canvas)  # (H, W, 3)


def pose_heatmaps(keypoints_xy, height: int, width: int, frame=None, sigma=None) -> np.ndarray:
    """One Gaussian per joint, float32 (K, H, W) in [0, 1]; zeros for a missing joint."""
    kp = np.asarray(keypoints_xy, dtype=np.float32).reshape(-1, 2)  # (K, 2)
    if frame is not None:
        kp = scale_keypoints(kp, frame, (height, width))
    sigma = HEATMAP_SIGMA * height if sigma is None else float(sigma)
    ys = np.arange(height, dtype=np.float32)
    xs = np.arange(width, dtype=np.float32)
    gy = np.exp(-((ys[None, :] - kp[:, 1:2]) ** 2) / (2 * sigma**2))  # (K, H)
    gx = np.exp(-((xs[None, :] - kp[:, 0:1]) ** 2) / (2 * sigma**2))  # (K, W)
    maps = gy[:, :, None] * gx[:, None, :]  # (K, H, W): a 2-D Gaussian is separable
    maps[is_missing(kp)] = 0.0
    return maps.astype(np.float32)
