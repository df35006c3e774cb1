"""The built-in benchmarks' cartoon persons and signers, drawn from real keypoints and a look.

No DeepFashion photo (Liu et al., CVPR 2016) can be downloaded here, so `data.synthesize`
draws a stand-in benchmark: every clothing item gets one `Appearance` (background, skin,
hair, a top with or without sleeves, trousers, shorts, a skirt or a dress, shoes; garments
plain, striped, checked or dotted), chosen from the item's name and a seed, and is drawn in
each of that item's real OpenPose COCO-18 poses (Cao et al., arXiv:1611.08050). The look
stays and only the pose changes, so a model must carry the look from the source view to
the target pose, which is the task of pose-guided person image synthesis.

How a person is drawn from keypoints:
  1. `body_geometry` scales the visible joints onto the canvas, measures the body unit u
     (the torso length, neck to hip) from whichever limbs are visible, and fills in what a
     drawing needs and the pose lacks: a shoulder or hip from its twin or the neck, a knee
     and ankle hanging down, a wrist beyond its elbow, the head above the neck. A pose with
     neither neck nor shoulder has no torso to hang a body on: `draw_person` returns None.
  2. `draw_person` paints back to front on a canvas twice the size: long hair, legs and
     legwear, torso, bare arms then sleeves, the head (a face turned toward the nose, or all
     hair for a back view with no nose and no eyes), then averages 2x2 pixels down.
  3. Every part is tapered capsules and polygons whose widths are fractions of u, so the
     person scales with the pose; patterns are anchored at the neck and move with it, and
     their period (0.45 u, at least 4 pixels) is large enough to survive a 64-pixel image.

The appearance: a light, plain background; saturated garment colours; the DeepFashion category
in the item's name decides the legwear where it can (Dresses and Rompers a dress, Skirts a skirt,
Shorts shorts, Pants, Leggings, Denim and Suiting trousers), otherwise the seed does.

Keypoints arrive in data.py's convention: (18, 2) float (x, y) pixels in the 256x176 frame,
OpenPose COCO-18 order, a joint with a negative coordinate missing (see FRAME below).

The signer, for the sign-language benchmark (FPDM's PHOENIX-2014T protocol; no PHOENIX video can
be had here either): sign_data.py draws each real signing sequence (../shared/data/sign) in many
`SignerLook`s (background, skin, hair and its style, a top with long or short sleeves, a collar).
`signer_geometry` scales the (50, 2) keypoints of the 260x210 frame (SIGN_FRAME; x and y apart),
takes u from the shoulders (0.6 u apart, as in draw_person), guesses a missing shoulder, elbow or
wrist; `draw_signer` paints long hair, the top from the shoulders past the bottom edge (PHOENIX is
upper body only), collar, neck, head, arms (outlined, so one in front of the top shows), then the
hands over everything, as signing holds them in front of the body and face: a palm polygon round
wrist and knuckles, each finger tapered capsules knuckle to tip, each with a darker edge so the
fingers stay apart at 128x104, where a hand is about 13 px.

Commands (the persons are seen in the benchmark they make):
    python data.py --synthesize runs/bench --size 256x176 --max-items 20
    python data.py --preview runs/bench --out runs/preview.png
    python data.py --synthesize-sign runs/sign
    python -m pytest -q tests/test_persons.py

Shapes: H W image height and width (a PIL size is (W, H)), K = 18 keypoints (J = 50 for a
signer, 21 a hand), u the body unit in canvas pixels, P the pattern period in pixels.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# note: data.py imports this file to write the benchmark, so importing data.py back would
# close an import circle (and pull torch into a drawing file). The two facts of data.py's
# keypoint convention a drawing needs are restated here instead; tests/test_persons.py
# checks that they agree with data.FRAME and poses.is_missing.
FRAME = (256, 176)  # (H, W): the frame the keypoints are in


def _visible(keypoints: np.ndarray) -> np.ndarray:
    """(K, 2) -> (K,) bool: a joint with a negative coordinate is missing, as in data.py."""
    return ~(np.asarray(keypoints) < 0).any(axis=-1)


# ----------------------------------------------------------------------------- appearance

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


# ----------------------------------------------------------------------------- body geometry

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
    pts = {j: keypoints[j] * scale for j in np.flatnonzero(_visible(keypoints))}
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


# ----------------------------------------------------------------------------- drawing primitives

def _box(p, r):
    return [float(p[0] - r), float(p[1] - r), float(p[0] + r), float(p[1] + r)]


def _poly(draw, points, fill):
    draw.polygon([(float(x), float(y)) for x, y in points], fill=fill)


def _widen(a, b, minimum):
    """Spread a pair of points (shoulders, hips) to at least `minimum` apart: side views."""
    mid, gap = (a + b) / 2, b - a
    if np.hypot(*gap) >= minimum:
        return a, b
    across = _unit(gap) if np.hypot(*gap) > 1e-6 else np.array([1.0, 0.0])
    return mid - across * minimum / 2, mid + across * minimum / 2


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


# ----------------------------------------------------------------------------- the parts of a person

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


# ----------------------------------------------------------------------------- one person

def _canvas(size, background):
    """A blank (H, W) canvas in the background colour and its drawing handle."""
    canvas = Image.new("RGB", (size[1], size[0]), background)  # PIL sizes are (W, H)
    return canvas, ImageDraw.Draw(canvas)


def draw_person(keypoints, look: Appearance, size=(256, 176), supersample: int = 2):
    """One drawn person in one pose, PIL (W, H) RGB, or None for a pose with no torso."""
    big = (size[0] * supersample, size[1] * supersample)
    body = body_geometry(np.asarray(keypoints, np.float32), big)
    if body is None:
        return None
    canvas, draw = _canvas(big, look.background)
    _draw_head(draw, body, look, behind=True)
    _draw_legs(draw, canvas, body, look)
    _draw_upper(draw, canvas, body, look)
    _draw_head(draw, body, look, behind=False)
    # drawing at twice the size and averaging down gives smooth (antialiased) edges
    return canvas.reduce(supersample) if supersample > 1 else canvas


# ----------------------------------------------------------------------------- the signer: keypoints

# note: the facts of the signing keypoints (assets/sign/README.md, poses.SIGN50) are
# restated here for the same reason as FRAME; tests/test_persons.py checks they agree.
SIGN_FRAME = (260, 210)  # (H, W): PHOENIX-2014T's frame, which the 50 signing keypoints are in
SIGN_JOINTS = 50  # BODY_25's first eight (nose, neck, right arm, left arm), then two hands
HAND_POINTS = 21
LEFT_HAND, RIGHT_HAND = 8, 8 + HAND_POINTS  # first point of each hand; "right" is the signer's
PALM = (0, 1, 5, 9, 13, 17)  # wrist, thumb base, the four knuckles: once round the palm
FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))
# shoulder, elbow, wrist, the arm's hand; the left first, so that the right hand (most signers'
# dominant hand, the one that moves most) is drawn over the left where they cross
ARMS = ((5, 6, 7, LEFT_HAND), (2, 3, 4, RIGHT_HAND))
SHOULDERS_APART = 62  # the README places every sequence with its shoulders about 62 px apart


# ----------------------------------------------------------------------------- the signer's look

HAIR_STYLES = ("short", "long", "bun")
# Muted backdrops, light and dark (PHOENIX films its signers before a dark grey-blue wall), so the
# saturated top stands out from the wall and light and dark skins each find a wall they show on.
BACKDROPS = ((236, 236, 232), (205, 215, 230), (215, 228, 210), (150, 150, 150), (92, 104, 124), (58, 66, 78))


@dataclass(frozen=True)
class SignerLook:
    """What stays the same for one signer across a video; the benchmark draws each training
    sequence in many looks, so the look must come from the source frame, not the sequence."""

    background: tuple
    skin: tuple
    hair: tuple
    hair_style: str  # short | long (falls behind the shoulders) | bun
    top: tuple  # (colour, pattern, second colour), patterns as Appearance's
    sleeves: str  # long | short (skin forearms)
    collar: tuple | None  # a V collar in a third colour, or None for a round neck


def _far(a, b, distance: int) -> bool:
    return int(np.abs(np.subtract(a, b)).sum()) > distance


@functools.lru_cache(maxsize=4096)
def sample_signer_look(name: str, seed: int = 0) -> SignerLook:
    """The deterministic look of one signer (one video in one look), from its name and a seed."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))]
    # note: the hands sign in front of the top, so a top near the skin tone would hide them
    tops = [c for c in GARMENT_COLORS if _far(c, skin, 180)]
    top = tops[rng.integers(len(tops))]
    walls = [c for c in BACKDROPS if _far(c, skin, 120) and _far(c, top, 120)]
    wall = np.add(walls[rng.integers(len(walls))], rng.integers(-8, 9, size=3))  # a tint per signer
    return SignerLook(
        background=tuple(int(v) for v in np.clip(wall, 0, 255)),
        skin=skin,
        hair=HAIR_COLORS[rng.integers(len(HAIR_COLORS))],
        hair_style=str(rng.choice(HAIR_STYLES)),
        top=(top, str(rng.choice(PATTERNS, p=[0.4, 0.2, 0.2, 0.2])), _contrasting(rng, top)),
        sleeves=str(rng.choice(["long", "short"], p=[0.6, 0.4])),
        collar=_contrasting(rng, top) if rng.random() < 0.4 else None,
    )


# ----------------------------------------------------------------------------- the signer's geometry

@dataclass
class Signer:
    """A signing pose with the gaps a drawing needs filled in, in canvas pixels."""

    unit: float  # draw_person's body unit (shoulders 0.6 u apart), so widths and patterns match it
    neck: np.ndarray
    shoulders: tuple
    down: np.ndarray  # along the torso, perpendicular to the shoulders, leaning to the vertical
    head: np.ndarray  # the face's centre
    arms: list  # [(shoulder, elbow, wrist, the hand's wrist or None)]
    hands: list  # [((21, 2) canvas points, (21,) bool visible)] for each hand with a point


def _signer_torso(pts: dict, typical: float):
    """Neck and shoulders, one guessed from the others; None without a neck or both shoulders."""
    rs, ls, neck = pts.get(2), pts.get(5), pts.get(1)
    if neck is None and (rs is None or ls is None):
        return None
    if rs is None and ls is None:  # a front view: the signer's right is the image left
        rs, ls = neck - np.array([typical / 2, 0.0]), neck + np.array([typical / 2, 0.0])
    rs = rs if rs is not None else 2 * neck - ls
    ls = ls if ls is not None else 2 * neck - rs
    neck = neck if neck is not None else (rs + ls) / 2
    return neck, rs, ls


def _signer_arm(pts: dict, shoulder, e: int, w: int, hand, seen, unit: float):
    """(shoulder, elbow, wrist, hand wrist or None), or None for an arm with nothing to go on."""
    hand_wrist = hand[0] if seen[0] else None
    wrist = pts.get(w, hand_wrist)  # note: the hand's own wrist stands in for a missing body wrist
    elbow = pts.get(e)
    if elbow is None:
        if wrist is None:
            return None
        elbow = (shoulder + wrist) / 2  # no elbow: a straight arm
    if wrist is None:
        wrist = elbow + _unit(elbow - shoulder) * 0.4 * unit
    gap = hand_wrist is not None and np.hypot(*(hand_wrist - wrist)) > 0.01 * unit
    return shoulder, elbow, wrist, hand_wrist if gap else None


def signer_geometry(keypoints, size) -> Signer | None:
    """Keypoints (50, 2) in the 260x210 frame -> a drawable Signer on a canvas of `size` (H, W)."""
    keypoints = np.asarray(keypoints, np.float64).reshape(SIGN_JOINTS, 2)  # (50, 2)
    scale = np.array([size[1] / SIGN_FRAME[1], size[0] / SIGN_FRAME[0]])  # (2,) x and y apart
    points, seen = keypoints * scale, _visible(keypoints)  # (50, 2) canvas pixels, (50,)
    pts = {j: points[j] for j in range(8) if seen[j]}
    typical = SHOULDERS_APART * scale[0]
    torso = _signer_torso(pts, typical)
    if torso is None:
        return None
    neck, rs, ls = torso
    unit = float(np.clip(np.hypot(*(ls - rs)), 0.7 * typical, 1.4 * typical)) / 0.6
    across = _unit(ls - rs) if ls[0] >= rs[0] else -_unit(ls - rs)  # (2,) image left to right
    down = _unit(np.array([-across[1], across[0]]) + np.array([0.0, 1.0]))
    head = points[0] - down * 0.02 * unit if seen[0] else neck - down * 0.36 * unit
    arms, hands = [], []
    for s, e, w, h in ARMS:
        shoulder = rs if s == 2 else ls
        hand, hand_seen = points[h:h + HAND_POINTS], seen[h:h + HAND_POINTS]  # (21, 2), (21,)
        arm = _signer_arm(pts, shoulder, e, w, hand, hand_seen, unit)
        arms += [arm] if arm is not None else []
        hands += [(hand, hand_seen)] if hand_seen.any() else []
    return Signer(unit, neck, _widen(rs, ls, 0.7 * typical), down, head, arms, hands)


# ----------------------------------------------------------------------------- the parts of a signer

def _edge(color) -> tuple:
    """An outline shade of `color`: darker, or lighter for a colour already near black."""
    c = np.asarray(color, np.float64)
    return tuple(int(v) for v in (c + (255 - c) * 0.35 if c.mean() < 70 else c * 0.68))


def _outlined(draw, segments, fill, edge, o: float, lead: float = 0.0):
    """Tapered capsules (p, q, r1, r2) with an outline `o` wide: all edges first, then all fills,
    so the joints inside one chain show no line but a chain drawn later is set off by its edge.
    The first edge starts `lead` of the way along its segment (a finger grows out of the palm)."""
    for k, (p, q, r1, r2) in enumerate(segments):
        _capsule(draw, p + (q - p) * (lead if k == 0 else 0.0), q, r1 + o, r2 + o, edge)
    for p, q, r1, r2 in segments:
        _capsule(draw, p, q, r1, r2, fill)


def _draw_signer_torso(draw, canvas, signer: Signer, look: SignerLook):
    """The top from the shoulders past the bottom edge, the collar, the neck."""
    u, down, neck = signer.unit, signer.down, signer.neck
    rs, ls = signer.shoulders
    out, up = _unit(ls - rs) * 0.04 * u, -down * 0.1 * u  # the chest a little wider than the joints
    reach = (canvas.size[1] - min(rs[1], ls[1])) / max(down[1], 0.3) + 0.2 * u  # past the bottom
    top = neck + up * 1.3  # the top's edge rises from the shoulders to the neck, over the joints

    def torso(d, fill):
        _poly(d, (rs - out + up, top, ls + out + up, ls + out + down * reach, rs - out + down * reach), fill)
        for s in (rs, ls):
            d.ellipse(_box(s, 0.1 * u), fill=fill)

    _paint(canvas, look.top, signer, torso)
    across = _unit(ls - rs)
    if look.collar is not None:  # a V of collar with skin inside it
        _poly(draw, (top - across * 0.13 * u, top + across * 0.13 * u, neck + down * 0.12 * u), look.collar)
        _poly(draw, (top - across * 0.07 * u, top + across * 0.07 * u, neck + down * 0.03 * u), look.skin)
    _capsule(draw, neck, signer.head, 0.07 * u, 0.07 * u, look.skin)


def _draw_signer_head(draw, signer: Signer, look: SignerLook, behind: bool):
    """Long hair behind the body (`behind`), else hair, bun and the face with its eyes."""
    u, c = signer.unit, signer.head
    rx, ry = 0.16 * u, 0.2 * u  # a head about half the shoulder width across, a cartoon's head
    if behind:
        if look.hair_style == "long":  # down to the shoulders, behind them
            _poly(draw, (c + (-1.1 * rx, 0), c + (1.1 * rx, 0), c + (1.35 * rx, 2.2 * ry), c + (-1.35 * rx, 2.2 * ry)),
                  look.hair)
        return
    draw.ellipse([c[0] - 1.1 * rx, c[1] - 1.2 * ry, c[0] + 1.1 * rx, c[1] + 0.6 * ry], fill=look.hair)
    if look.hair_style == "bun":
        draw.ellipse(_box(c - (0, 1.25 * ry), 0.55 * rx), fill=look.hair)
    draw.ellipse([c[0] - rx, c[1] - 0.88 * ry, c[0] + rx, c[1] + ry], fill=look.skin)
    for side in (-1, 1):
        draw.ellipse(_box(c + (side * 0.42 * rx, -0.12 * ry), 0.025 * u), fill=(40, 30, 30))


def _draw_signer_arm(draw, canvas, signer: Signer, look: SignerLook, arm):
    """One arm: skin (forearm and the wrist up to the hand), then the sleeve over it, outlined
    so that an arm in front of the top (same colour) still shows."""
    shoulder, elbow, wrist, hand_wrist = arm
    u = signer.unit
    bare = [(shoulder, elbow, 0.085 * u, 0.07 * u), (elbow, wrist, 0.07 * u, 0.055 * u)]
    bare += [(wrist, hand_wrist, 0.055 * u, 0.05 * u)] if hand_wrist is not None else []
    _outlined(draw, bare, look.skin, _edge(look.skin), 0.015 * u)
    if look.sleeves == "short":  # ends halfway down the upper arm
        sleeve = [(shoulder, shoulder + (elbow - shoulder) * 0.55, 0.105 * u, 0.095 * u)]
    else:
        sleeve = [(shoulder, elbow, 0.105 * u, 0.085 * u), (elbow, wrist, 0.085 * u, 0.07 * u)]
    for p, q, r1, r2 in sleeve:
        _capsule(draw, p, q, r1 + 0.02 * u, r2 + 0.02 * u, _edge(look.top[0]))
    _paint(canvas, look.top, signer, lambda d, fill: [_capsule(d, *s, fill) for s in sleeve])


def _draw_hand(draw, signer: Signer, look: SignerLook, points, seen):
    """A palm polygon round the wrist and knuckles, then each finger knuckle to tip, each with a
    darker edge so that the fingers stay apart where they cross the palm or each other.
    note: widths come from the body unit, not the hand's projected length: a hand turned
    edge-on looks shorter, never thinner."""
    u, edge = signer.unit, _edge(look.skin)
    r, o = 0.024 * u, 0.012 * u  # a finger about 0.08 shoulder widths thick, a cartoon's fingers
    ring = [points[j] for j in PALM if seen[j]]  # the palm's visible corners, in order round it
    if len(ring) >= 2:
        _outlined(draw, [(p, q, r, r) for p, q in zip(ring, ring[1:] + ring[:1])], look.skin, edge, o)
    if len(ring) >= 3:
        _poly(draw, ring, look.skin)
    for finger in FINGERS[::-1]:  # little finger first, thumb last: as seen from the back of the hand
        bones = [(points[a], points[b], r * (1 - 0.07 * k), r * (0.93 - 0.07 * k))
                 for k, (a, b) in enumerate(zip(finger, finger[1:])) if seen[a] and seen[b]]
        _outlined(draw, bones, look.skin, edge, o, lead=0.4)  # no line across the knuckles


# ----------------------------------------------------------------------------- one signer

def draw_signer(keypoints, look: SignerLook, size=(128, 104), supersample: int = 2):
    """One drawn signer in one pose (keypoints (50, 2) in the 260x210 frame), PIL (W, H) RGB,
    or None for a pose with neither neck nor both shoulders."""
    big = (size[0] * supersample, size[1] * supersample)
    signer = signer_geometry(keypoints, big)
    if signer is None:
        return None
    canvas, draw = _canvas(big, look.background)
    _draw_signer_head(draw, signer, look, behind=True)
    _draw_signer_torso(draw, canvas, signer, look)
    _draw_signer_head(draw, signer, look, behind=False)
    for arm in signer.arms:  # arms over the face: signing brings them up in front of it
        _draw_signer_arm(draw, canvas, signer, look, arm)
    for points, seen in signer.hands:  # hands last: they sign in front of the body and the face
        _draw_hand(draw, signer, look, points, seen)
    return canvas.reduce(supersample) if supersample > 1 else canvas


# ----------------------------------------------------------------------------- many images at once

def draw_all(draw_jobs, jobs: list, workers: int) -> int:
    """Run `draw_jobs(chunk) -> count` over `jobs` in `workers` processes; returns the count drawn.
    Images are independent, so two processes draw twice as fast on two cores; small jobs (the tests)
    stay in this process, where starting workers would cost more. `draw_jobs` must be a module-level
    function (workers receive it by name), and the result does not depend on `workers`."""
    if workers <= 1 or len(jobs) < 400:
        return draw_jobs(jobs)
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    chunks = [jobs[i::workers * 4] for i in range(workers * 4)]
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return sum(pool.map(draw_jobs, chunks))
