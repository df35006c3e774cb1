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
    paint_source_colours(source, source_kp, target_kp)  # (B, 4, S, S) the target pose in the source's colours
    warp_source(source, source_kp, target_kp)           # (B, 4, S, S) the source's pixels moved into the target pose
    python -m pytest -q tests/test_poses.py

The third map is the one that carries appearance (`paint_source_colours`, after the part-wise
warping of Deformable GANs, Siarohin et al., arXiv:1801.00055, reduced to one colour per part):
each body part (the torso, then every bone as a thick segment) takes the mean colour of the same
part in the source photo and is painted where that part lies in the target pose. `warp_source`
goes the rest of the way to Deformable GANs' part-wise transforms: every target pixel near a bone
takes the source pixel at the same place relative to the same bone, so patterns, hair and hems
travel too; the head moves as one part, and a leg the frame cuts off is continued (the CPU presets
use it: RESULTS.md, "the source warped" and "the head and the legs").

Shapes: K joints (18 or 50), H W the height and width drawn at, B batch, S the square training
size, L parts (the torso and the layout's bones).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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
    torso: tuple = ()  # (r_shoulder, l_shoulder, l_hip, r_hip) when the layout has hips
    face: tuple = ()  # the joints whose mean is the head's centre (warp_source's head part)
    legs: tuple = ()  # ((hip, knee, ankle), ...): warp_source continues a leg the frame cuts off

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
                POSE_COLORS, frame=(256, 176), torso=(2, 5, 11, 8), face=(0, 14, 15, 16, 17),
                legs=((8, 9, 10), (11, 12, 13)))
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
                POSE_COLORS[:8] + (None,) * (2 * HAND_POINTS), frame=(260, 210), face=(0,))

LAYOUTS = {len(layout.joint_names): layout for layout in (COCO18, SIGN50)}
NECK = 1  # the neck is joint 1 in both layouts (COCO-18's order, kept by the upper body's first eight)


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


# ----------------------------------------------------------------------------- the pose in the source's colours

PART_RADIUS = 3.0  # a part's half-width in its bone's line widths: a limb is wider than its skeleton line
SOURCE_COLOUR_CHANNELS = 4  # RGB in [0, 1] and a coverage channel (a black sleeve is not "no sleeve")


def _pixel_grid(size: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of every pixel centre of an S x S image, flattened: (S*S,) each, like's device and dtype."""
    grid = torch.arange(size, device=like.device, dtype=like.dtype)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")  # (S, S) each
    return xs.reshape(-1), ys.reshape(-1)


def _segment_masks(kp: torch.Tensor, layout: Layout, size: int) -> torch.Tensor:
    """(B, K, 2) keypoints in the S x S frame -> bool (B, L - 1, S, S): pixels near each bone.

    note: x and y are kept apart rather than in a trailing axis of 2: reductions over such a tiny
    axis are slow on the CPU (the whole painting took 58 ms for a training batch of 32 that way, 30 now)."""
    bones = torch.tensor(layout.bones, device=kp.device)  # (L - 1, 2)
    radii = (torch.tensor(layout.bone_widths, device=kp.device) * size * PART_RADIUS).clamp_min(0.75)  # (L - 1,)
    xs, ys = _pixel_grid(size, kp)  # (S*S,) each
    ax, ay = kp[:, bones[:, 0], 0, None], kp[:, bones[:, 0], 1, None]  # (B, L - 1, 1) each: one end
    dx, dy = kp[:, bones[:, 1], 0, None] - ax, kp[:, bones[:, 1], 1, None] - ay  # (B, L - 1, 1): along the bone
    px, py = xs - ax, ys - ay  # (B, L - 1, S*S): pixel relative to the first end
    along = ((px * dx + py * dy) / (dx * dx + dy * dy).clamp_min(1e-6)).clamp(0, 1)  # (B, L - 1, S*S)
    dist2 = (px - along * dx) ** 2 + (py - along * dy) ** 2  # (B, L - 1, S*S): to the closest point of the bone
    present = (kp[:, bones] >= 0).flatten(2).all(-1)  # (B, L - 1): both ends seen
    near = (dist2 <= radii[None, :, None] ** 2) & present[..., None]  # (B, L - 1, S*S)
    return near.unflatten(-1, (size, size))  # (B, L - 1, S, S)


def _torso_mask(kp: torch.Tensor, layout: Layout, size: int) -> torch.Tensor:
    """(B, K, 2) -> bool (B, 1, S, S): inside the shoulder-hip quadrilateral (two triangles, so a
    twisted torso still covers something); all False without hips or with a corner missing."""
    b = kp.shape[0]
    if not layout.torso:
        return torch.zeros(b, 1, size, size, dtype=torch.bool, device=kp.device)
    xs, ys = _pixel_grid(size, kp)  # (S*S,) each
    c = kp[:, list(layout.torso), None]  # (B, 4, 1, 2) corners

    def side(u, v):  # (B, 1, 2) x2 -> (B, S*S): which side of the edge u -> v each pixel lies on
        return (v[..., 0] - u[..., 0]) * (ys - u[..., 1]) - (v[..., 1] - u[..., 1]) * (xs - u[..., 0])

    def inside(p, q, r):  # the same side of all three edges
        s1, s2, s3 = side(p, q), side(q, r), side(r, p)
        return ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))

    mask = inside(c[:, 0], c[:, 1], c[:, 2]) | inside(c[:, 0], c[:, 2], c[:, 3])  # (B, S*S)
    present = (kp[:, list(layout.torso)] >= 0).flatten(1).all(-1)  # (B,)
    return (mask & present[:, None]).reshape(b, 1, size, size)


def _paint_order(layout: Layout) -> tuple[list, list]:
    """The layout's bones split for painting: those inside the trunk (neck to shoulders and hips),
    painted under the torso, and the rest, painted over it; bone indices, ([], all) without a torso."""
    trunk = [i for i, (a, b) in enumerate(layout.bones) if {a, b} <= {NECK, *layout.torso}] if layout.torso else []
    return trunk, [i for i in range(len(layout.bones)) if i not in trunk]


def _last_part(masks: torch.Tensor) -> torch.Tensor:
    """bool (B, L, ...) part masks in painting order -> (B, ...) the last part painted at each pixel,
    counted from 1; 0 where none is."""
    order = torch.arange(1, masks.shape[1] + 1, device=masks.device).view(1, -1, *[1] * (masks.dim() - 2))
    return (masks * order).amax(dim=1)


def paint_masks(keypoints: torch.Tensor, size: int) -> torch.Tensor:
    """(B, K, 2) (x, y) keypoints in the S x S frame -> bool (B, L, S, S), in painting order: the
    bones inside the trunk (neck to shoulders and hips), the torso over them, then the other bones
    (arms, legs, head) over the torso, as an arm in front of the body covers it.

    note: not appearance.part_masks, on purpose. The part colour METRIC keeps its own regions (a torso
    shrunk to 60 %, limbs as wide as a share of the torso's length), so it does not score the model's
    input with the ruler that drew it."""
    layout = layout_of(keypoints[0])
    kp = keypoints.float()
    bones = _segment_masks(kp, layout, size)  # (B, L - 1, S, S)
    trunk, rest = _paint_order(layout)
    return torch.cat([bones[:, trunk], _torso_mask(kp, layout, size), bones[:, rest]], dim=1)


def source_part_colours(source: torch.Tensor, source_kp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) in [-1, 1], (B, K, 2) -> each part's mean colour in the SOURCE pose, (B, L, 3) in
    [0, 1], and whether the source shows the part at all, (B, L) bool. Read once per source photo
    (streaming keeps it for every frame, as it keeps the source tokens)."""
    masks = paint_masks(source_kp, source.shape[-1]).float()  # (B, L, S, S)
    pixels = (source.float() + 1) / 2  # (B, 3, S, S) in [0, 1]
    count = masks.sum(dim=(2, 3))  # (B, L)
    colours = torch.einsum("blhw,bchw->blc", masks, pixels) / count.clamp_min(1)[..., None]  # (B, L, 3)
    return colours, count > 0


def paint_source_colours(source: torch.Tensor, source_kp: torch.Tensor, target_kp: torch.Tensor,
                         part_colours: tuple | None = None) -> torch.Tensor:
    """The target pose painted in the source's colours: (B, 3, S, S) in [-1, 1], (B, K, 2) x2 -> (B, 4, S, S).

    Each part's colour is the mean of the source pixels inside that part in the SOURCE pose; it is
    painted inside the same part in the TARGET pose, later parts over earlier ones (paint_masks' order).
    Channel 3 is 1 where something was painted (a black sleeve is not "nothing there"). A part
    missing in either pose paints nothing, so a source whose pose is unknown paints nothing at all.
    The network still has to draw the background, folds, shading, hair and every texture.
    part_colours: source_part_colours(source, source_kp) already read (then source_kp is not used).
    note: painting the source's background colour as well was tried and changed nothing measurable
    (RESULTS.md, "appearance"), so the background is left to the network.
    """
    b, size = source.shape[0], source.shape[-1]
    colours, shown = source_part_colours(source, source_kp) if part_colours is None else part_colours
    tgt_masks = paint_masks(target_kp, size) & shown[..., None, None]  # (B, L, S, S): only parts the source shows
    last = _last_part(tgt_masks)  # (B, S, S): the last part painted at each pixel, 0 = none
    index = (last - 1).clamp_min(0)  # (B, S, S)
    painted = torch.gather(colours, 1, index.flatten(1)[..., None].expand(-1, -1, 3))  # (B, S*S, 3)
    covered = (last > 0).flatten(1)[..., None].float()  # (B, S*S, 1)
    out = torch.cat([painted * covered, covered], dim=-1)  # (B, S*S, 4)
    return out.transpose(1, 2).reshape(b, SOURCE_COLOUR_CHANNELS, size, size).to(source.dtype)


# ----------------------------------------------------------------------------- the source warped into the target pose

WARP_REACH = 0.1    # of the image size: how far beyond the part masks a bone still carries the source (skirts, collars)
HEAD_RADIUS = 1.2   # the head's part: a disc this many neck-to-head-centre lengths around the head centre
# A leg the frame cuts off (DeepFashion's upper-body crops: 61 % of the benchmark's training targets lack
# their knees) goes on in the direction it came from: the knee THIGH_PER_TORSO neck-to-hip lengths below
# the hip, the ankle SHIN_PER_THIGH thigh lengths below the knee, the medians of the benchmark's training
# keypoints (real DeepFashion OpenPose annotations) where all three joints are seen.
THIGH_PER_TORSO, SHIN_PER_THIGH = 0.79, 0.95


def _continue_legs(kp: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, K, 2) -> (B, K, 2) with every missing knee and ankle whose hip (and neck) is seen put where
    the leg would go on (THIGH_PER_TORSO, SHIN_PER_THIGH); a layout without legs comes back as it was."""
    kp = kp.clone()

    def seen(j):  # (B, 1): joint j is there (given or already continued)
        return (kp[:, j] >= 0).all(-1, keepdim=True)

    for hip, knee, ankle in layout.legs:
        below_hip = kp[:, hip] + THIGH_PER_TORSO * (kp[:, hip] - kp[:, NECK])  # (B, 2): along neck -> hip
        kp[:, knee] = torch.where(~seen(knee) & seen(hip) & seen(NECK), below_hip, kp[:, knee])
        below_knee = kp[:, knee] + SHIN_PER_THIGH * (kp[:, knee] - kp[:, hip])  # (B, 2): along hip -> knee
        kp[:, ankle] = torch.where(~seen(ankle) & seen(knee) & seen(hip), below_knee, kp[:, ankle])
    return kp


def _with_head(kp: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, K, 2) -> (B, K + 1, 2): the head's centre appended as one more joint, the mean of the face
    joints seen (the ears alone for a back view); missing without the neck or any face joint."""
    face = kp[:, list(layout.face)]  # (B, F, 2)
    seen = (face >= 0).all(-1, keepdim=True).float()  # (B, F, 1)
    centre = (face * seen).sum(1) / seen.sum(1).clamp_min(1)  # (B, 2)
    known = (seen.sum(1) > 0) & (kp[:, NECK] >= 0).all(-1, keepdim=True)  # (B, 1): a face joint and the neck
    return torch.cat([kp, torch.where(known, centre, torch.full_like(centre, MISSING))[:, None]], dim=1)


def _bone_frames(kp: torch.Tensor, bones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, K, 2) keypoints, (N, 2) bones -> each bone's first end (B, N, 2), its vector (B, N, 2), its
    length (B, N); warp_source's N is L: the layout's L - 1 bones and the head's."""
    start = kp[:, bones[:, 0]]  # (B, N, 2)
    vector = kp[:, bones[:, 1]] - start  # (B, N, 2)
    return start, vector, vector.norm(dim=-1)


def _bone_coordinates(kp: torch.Tensor, bones: torch.Tensor, size: int):
    """Every pixel of the S x S image relative to every bone of the TARGET pose: where along the
    bone its closest point lies (0..1), and its offset from that point, both along the bone and across
    it. Returns along, (offset along, offset across), distance, each (B, N, S*S), and the bones'
    lengths (B, N)."""
    start, vector, length = _bone_frames(kp, bones)
    ux, uy = (vector / length.clamp_min(1e-6)[..., None]).unbind(-1)  # (B, N) each: the bone's direction
    ux, uy = ux[..., None], uy[..., None]  # (B, N, 1)
    xs, ys = _pixel_grid(size, kp)  # (S*S,) each
    px, py = xs - start[..., 0:1], ys - start[..., 1:2]  # (B, N, S*S): pixel relative to the first end
    along = ((px * ux + py * uy) / length.clamp_min(1e-6)[..., None]).clamp(0, 1)  # (B, N, S*S)
    ex, ey = px - along * vector[..., 0:1], py - along * vector[..., 1:2]  # (B, N, S*S) from the closest point
    turned = (ex * ux + ey * uy, ey * ux - ex * uy)  # (B, N, S*S) x2: in the bone's own axes
    return along, turned, (ex * ex + ey * ey).sqrt(), length


def _bone_of_pixel(target_kp: torch.Tensor, layout: Layout, distance: torch.Tensor, head: torch.Tensor,
                   size: int, reach: float):
    """Which bone carries each target pixel, (B, S*S), and whether any does, (B, S*S) bool.

    `distance` (B, L, S*S) is to the layout's bones and, last, the head's (neck to head centre); inf
    for a bone either pose lacks, so such a bone never wins. Inside the part masks the part painted
    last wins (paint_masks' order: an arm in front of the torso is the arm); the torso quadrilateral
    belongs to its nearest trunk bone (neck to shoulders and hips). The head's disc, `head` (B, S*S),
    belongs to the head bone wherever no part but the face's own bones is painted: one transform for
    the whole head, so hair above it and a back view's head travel with it. Elsewhere, the nearest bone
    within `reach` (a skirt between the thighs, a collar)."""
    trunk, rest = _paint_order(layout)
    part_bone = torch.tensor(trunk + [-1] + rest, device=distance.device)  # paint part -> bone, -1: the torso
    face_bone = torch.tensor([bool({a, b} & set(layout.face)) for a, b in layout.bones] + [False],
                             device=distance.device)  # (L,): bones touching a face joint; -1 (torso) reads False
    last = _last_part(paint_masks(target_kp, size).flatten(2))  # (B, S*S): the last part painted, 0 = none
    painted = part_bone[(last - 1).clamp_min(0)]  # (B, S*S): its bone, -1 for the torso (read only where last > 0)
    limbs = distance[:, :-1]  # (B, L - 1, S*S): the layout's own bones
    nearest = limbs.argmin(dim=1)  # (B, S*S)
    if trunk:
        trunk_ids = torch.tensor(trunk, device=distance.device)
        chosen = torch.where(painted < 0, trunk_ids[limbs[:, trunk_ids].argmin(dim=1)], painted)
    else:
        chosen = painted
    bone = torch.where(last > 0, chosen, nearest)  # (B, S*S)
    usable = torch.gather(limbs, 1, bone[:, None]).squeeze(1).isfinite()  # (B, S*S)
    bone = torch.where(usable, bone, nearest)  # a part the source lacks: the nearest bone it has
    best = limbs.amin(dim=1)  # (B, S*S)
    head = head & ((last == 0) | face_bone[painted])  # (B, S*S): unpainted, or painted by a face bone
    bone = torch.where(head, distance.shape[1] - 1, bone)  # (B, S*S)
    return bone, (((last > 0) | (best <= reach * size)) & best.isfinite()) | head


def warp_source(source: torch.Tensor, source_kp: torch.Tensor, target_kp: torch.Tensor,
                reach: float = WARP_REACH) -> torch.Tensor:
    """The source photo warped part by part into the target pose: (B, 3, S, S) in [-1, 1], (B, K, 2)
    x2 -> (B, 4, S, S), RGB in [0, 1] and a coverage channel, like paint_source_colours.

    Deformable GANs' part-wise transforms (Siarohin et al., arXiv:1801.00055), one per bone: a target
    pixel near a bone (_bone_of_pixel) sits at some point along it and some offset from it; it takes the
    source pixel at the same point along the same bone in the source pose, with the offset turned as
    the bone turned and scaled by the ratio of the two bodies' sizes (the median ratio of their bone
    lengths). So stripes, checks and a skirt's hem travel with their part, where the mean colour of a
    part carries none of them. The head is one more part, as in Deformable GANs: a disc around the
    face joints' centre (HEAD_RADIUS) moved with the neck-to-head bone, so the hair travels with it;
    and a leg the frame cuts off goes on (_continue_legs), so trousers and skirts down to the frame's
    edge travel with the hips. A bone missing in either pose carries nothing.
    note: a wider reach (0.14) and head bones that only move and scale were tried and carried less
    (RESULTS.md, "the source warped"): the farther from its bone, the worse a pixel's guess; the head
    disc and the continued legs carried more (RESULTS.md, "the head and the legs").
    """
    b, size = source.shape[0], source.shape[-1]
    layout = layout_of(target_kp[0])
    head_joint = len(layout.joint_names)  # index of the head's centre, appended by _with_head
    bones = torch.tensor(layout.bones + ((NECK, head_joint),), device=source.device)  # (L, 2): + neck -> head
    kt, ks = (_with_head(_continue_legs(kp.float(), layout), layout) for kp in (target_kp, source_kp))
    present = (kt[:, bones] >= 0).flatten(2).all(-1) & (ks[:, bones] >= 0).flatten(2).all(-1)  # (B, L)
    s_start, s_vector, s_length = _bone_frames(ks, bones)
    along, (e_along, e_across), distance, t_length = _bone_coordinates(kt, bones, size)
    present = present & (t_length > 0.5) & (s_length > 0.5)  # a bone of no length has no direction
    ratio = torch.where(present, s_length / t_length.clamp_min(1e-6), torch.nan)[:, :-1]  # (B, L - 1): limbs only
    scale = ratio.nanmedian(dim=1).values.nan_to_num(1.0)[:, None, None]  # (B, 1, 1): source size / target size
    xs, ys = _pixel_grid(size, kt)  # (S*S,) each
    to_head = ((xs - kt[:, head_joint, 0:1]) ** 2 + (ys - kt[:, head_joint, 1:2]) ** 2).sqrt()  # (B, S*S)
    head = (to_head <= HEAD_RADIUS * t_length[:, -1:]) & present[:, -1:]  # (B, S*S): the head's disc
    bone, covered = _bone_of_pixel(kt[:, :head_joint], layout, torch.where(present[..., None], distance, torch.inf),
                                   head, size, reach)
    sx, sy = (s_vector / s_length.clamp_min(1e-6)[..., None])[..., None, :].unbind(-1)  # (B, L, 1): its direction
    x = s_start[..., 0:1] + along * s_vector[..., 0:1] + scale * (e_along * sx - e_across * sy)  # (B, L, S*S)
    y = s_start[..., 1:2] + along * s_vector[..., 1:2] + scale * (e_along * sy + e_across * sx)  # (B, L, S*S)
    x, y = (torch.gather(c, 1, bone[:, None]).squeeze(1) for c in (x, y))  # (B, S*S) each: the chosen bone's
    grid = torch.stack([x, y], dim=-1).view(b, size, size, 2).add(0.5).mul(2 / size).sub(1)  # (B, S, S, 2) in [-1, 1]
    pixels = F.grid_sample((source.float() + 1) / 2, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)  # (B, 3, S, S) in [0, 1]
    mask = covered.view(b, 1, size, size).float()  # (B, 1, S, S)
    return torch.cat([pixels * mask, mask], dim=1).to(source.dtype)  # (B, 4, S, S)


SOURCE_PAINTS = ("mean", "warp")  # UNetConfig.source_paint: paint_source_colours, warp_source


def source_map(paint: str, source: torch.Tensor, source_kp: torch.Tensor, target_kp: torch.Tensor,
               part_colours: tuple | None = None) -> torch.Tensor:
    """The 4-channel appearance map of the target pose, by `paint` (SOURCE_PAINTS): (B, 4, S, S).
    part_colours: "mean" only, source_part_colours already read (streaming)."""
    if paint == "warp":
        return warp_source(source, source_kp, target_kp)
    if paint == "mean":
        return paint_source_colours(source, source_kp, target_kp, part_colours=part_colours)
    raise ValueError(f"source paint {paint!r}: expected one of {', '.join(SOURCE_PAINTS)}")
