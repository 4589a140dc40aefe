"""The demo's phantom radiographs: anatomy (lungs, heart, ribs, clavicles, spine, diaphragm) and
each finding drawn at its side, zone and severity, with its lesion mask; closed-form shapes on
broadcast coordinate vectors (no per-pixel loops), float32 (see the package docstring for the
orientation convention: the patient's left is on the image's right)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .reports import SIDE_SIGN

# --------------------------------------------------------------------------------------------
# Rendering constants (body units: 1.0 = image width at body_scale 1; intensities in [0, 1])
# --------------------------------------------------------------------------------------------

DTYPE = np.float32  # rendering precision: float32 halves the time; 8-bit output needs no more
LUNG_BOX_MARGIN = 0.03  # lung bounding boxes are padded by this (body units) for findings near the edge
BACKGROUND = 0.04  # air outside the patient
TISSUE_DENSITY = (0.46, 0.54)  # soft tissue brightness, per patient
LUNG_AIR = 0.31  # how much darker the aerated lung is than soft tissue
HEART_DENSITY = 0.66
HEART_OPACITY = 0.88  # heart blends over what is behind it, leaving ribs/spine faintly visible
ABDOMEN_EXTRA = 0.08  # extra density below the diaphragm (liver, stomach)
FLUID_DENSITY = 0.56  # effusion ~ soft tissue
RIB_BRIGHTNESS = 0.075
CLAVICLE_BRIGHTNESS = 0.12
SPINE_BRIGHTNESS = 0.09
MARKING_BRIGHTNESS = 0.10  # bronchovascular streaks radiating from the hila
HILUM_BRIGHTNESS = 0.12
MAX_SHIFT = 0.02  # per-study translation of the patient in the field of view
DIAPHRAGM_DOME = 0.14  # dome height as a fraction of the lung's half-height
LEFT_DIAPHRAGM_DROP = 0.015  # left hemidiaphragm sits a little lower (the liver lifts the right)
NOISE_SIGMA = (0.012, 0.028)  # quantum noise range, per study

# zone centre as a fraction of the lung height from the apex
ZONE_HEIGHT_FRACTION = {"upper": 0.22, "middle": 0.50, "lower": 0.74}
# Lower-zone lesions are pushed this much (fraction of the lung half-width) toward the chest
# wall: medially the base lies behind the heart, where a lesion would read as a cardiac bulge.
LOWER_ZONE_LATERAL_SHIFT = 0.2

OPACITY_SIGMA = {"small": 0.040, "moderate": 0.052, "large": 0.068}
OPACITY_BRIGHTNESS = 0.38
EFFUSION_HEIGHT = {"small": 0.18, "moderate": 0.25, "large": 0.38}  # fraction of lung height
EFFUSION_MENISCUS = 0.10  # fluid climbs this much higher at the lateral wall (fraction of height)
NODULE_RADIUS = {"small": 0.030, "moderate": 0.040, "large": 0.054}
NODULE_BRIGHTNESS = 0.34
PNEUMOTHORAX_GAP = {"small": 0.040, "moderate": 0.065, "large": 0.095}  # chest wall to pleural line
PNEUMOTHORAX_DARKENING = 0.09
PLEURAL_LINE_BRIGHTNESS = 0.17
ATELECTASIS_HALF_WIDTH = {"small": 0.012, "moderate": 0.017, "large": 0.024}
ATELECTASIS_BRIGHTNESS = 0.30
CARDIOMEGALY_SCALE = {"small": 1.30, "moderate": 1.45, "large": 1.62}  # heart width factor

# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Per-patient body geometry (body units), shared by all studies of one patient."""

    body_scale: float  # size of the thorax in the field of view
    tissue: float  # soft-tissue brightness
    lung_offset: float  # midline to lung centre
    lung_ax: float  # lung half-width
    lung_ay: float  # lung half-height
    lung_cy: float  # lung centre height
    heart_ax: float
    heart_ay: float
    heart_cx: float  # > 0: toward the image's right (patient's left)
    heart_cy: float
    rib_spacing: float
    rib_phase: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Anatomy:
        """Draw a plausible adult thorax."""
        u = rng.uniform
        return cls(
            body_scale=u(0.92, 1.05),
            tissue=u(*TISSUE_DENSITY),
            lung_offset=u(0.185, 0.205),
            lung_ax=u(0.135, 0.150),
            lung_ay=u(0.285, 0.320),
            lung_cy=u(-0.065, -0.035),
            heart_ax=u(0.135, 0.150),
            heart_ay=u(0.110, 0.125),
            heart_cx=u(0.040, 0.060),
            heart_cy=u(0.070, 0.095),
            rib_spacing=u(0.060, 0.070),
            rib_phase=u(0.0, 2 * math.pi),
        )


@lru_cache(maxsize=8)
def _axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-0.5, 0.5]: x as a row vector, y as a column vector."""
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size - 0.5).astype(DTYPE)
    c.setflags(write=False)
    return c[None, :], c[:, None]


@lru_cache(maxsize=16)
def _upsampler(size: int, coarse: int) -> np.ndarray:
    """(size, coarse) linear-interpolation matrix: ``M @ G @ M.T`` upsamples a coarse grid."""
    pos = (np.arange(size) + 0.5) / size * (coarse - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, coarse - 2)
    frac = pos - lo
    m = np.zeros((size, coarse), dtype=DTYPE)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    m.setflags(write=False)
    return m


def _smooth_noise(rng: np.random.Generator, size: int, coarse: int) -> np.ndarray:
    """Band-limited noise (unit-ish amplitude) by bilinear upsampling of a coarse Gaussian grid."""
    m = _upsampler(size, coarse)
    return m @ rng.standard_normal((coarse, coarse), dtype=DTYPE) @ m.T


def _ramp(inside: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased edge: 1 where ``inside`` (a signed distance, > 0 inside) >> width, 0 outside."""
    return np.clip(0.5 + inside * (1.0 / width), 0.0, 1.0)


def _ellipse_distance(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside), first order in the level set."""
    u, v = (X - cx) * (1.0 / ax), (Y - cy) * (1.0 / ay)
    e = np.sqrt(u * u + v * v) + 1e-6
    grad = np.sqrt((u * (1.0 / ax)) ** 2 + (v * (1.0 / ay)) ** 2) + 1e-6
    return (e - 1.0) * e / grad


def _segment_distance(X: np.ndarray, Y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance to the segment p0-p1 (a capsule's level set)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) * (1.0 / (dx * dx + dy * dy)), 0.0, 1.0)
    return np.sqrt((X - x0 - t * dx) ** 2 + (Y - y0 - t * dy) ** 2)


def _span(coord: np.ndarray, lo: float, hi: float) -> slice:
    """Index slice of the (sorted) 1-D coordinate values lying in [lo, hi]."""
    values = coord.ravel()
    return slice(int(np.searchsorted(values, lo)), int(np.searchsorted(values, hi, side="right")))


@dataclass
class _Lung:
    """One lung field of one study (side sign s: +1 = patient's left = image right).

    Everything inside a lung is computed on its bounding box only (``box``; ``X``/``Y`` are the
    cropped coordinates, ``soft``/``hard`` the cropped masks): a lung is ~1/6 of the image, and
    this is most of the generator's speed.
    """

    s: float
    cx: float
    cy: float
    ax: float
    ay: float
    top: float
    base: float  # height of the lateral costophrenic angle
    box: tuple[slice, slice]  # (rows, cols) of the bounding box in the image
    X: np.ndarray  # (1, w) cropped x
    Y: np.ndarray  # (h, 1) cropped y
    soft: np.ndarray  # anti-aliased lung mask, (h, w)
    hard: np.ndarray  # boolean lung mask, (h, w)

    @property
    def height(self) -> float:
        return self.base - self.top

    def zone_y(self, zone: str) -> float:
        return self.top + ZONE_HEIGHT_FRACTION[zone] * self.height

    def lesion_x(self, zone: str, rng: np.random.Generator, medial: float, lateral: float) -> float:
        """x of a lesion centre, drawn between ``medial`` and ``lateral`` (signed fractions of the
        half-width from the lung centre, > 0 toward the chest wall)."""
        shift = LOWER_ZONE_LATERAL_SHIFT if zone == "lower" else 0.0
        return self.cx + self.s * self.ax * (rng.uniform(medial, lateral) + shift)


def _lung(X: np.ndarray, Y: np.ndarray, a: Anatomy, s: float, inspiration: float, px: float) -> _Lung:
    """The lung field on side ``s``: an ellipse cut from below by its hemidiaphragm."""
    cx, ay = s * a.lung_offset, a.lung_ay * inspiration
    cy = a.lung_cy + (a.lung_ay - ay)  # a deeper breath moves the diaphragm, not the apex
    ax = a.lung_ax
    base = cy + 0.80 * ay + (LEFT_DIAPHRAGM_DROP if s > 0 else 0.0)
    margin = LUNG_BOX_MARGIN + 2 * px
    box = (_span(Y, cy - ay - margin, base + margin), _span(X, cx - ax - margin, cx + ax + margin))
    Xc, Yc = X[:, box[1]], Y[box[0], :]
    ellipse = _ellipse_distance(Xc, Yc, cx, cy, ax, ay)
    # Diaphragm: a dome peaking a little medial of the lung's centre, meeting the lateral wall
    # at the costophrenic angle (the lowest point of the lung).
    t = (Xc - cx) * (1.0 / ax) + 0.2 * s
    diaphragm = base - DIAPHRAGM_DOME * ay * np.clip(1.0 - t * t, 0.0, 1.0)
    distance = np.maximum(ellipse, Yc - diaphragm)
    return _Lung(s, cx, cy, ax, ay, cy - ay, base, box, Xc, Yc, _ramp(-distance, px), distance < 0)


def _markings(lung: _Lung, wiggle: np.ndarray, phase: float) -> np.ndarray:
    """Bronchovascular markings (cropped to the lung): streaks radiating from the hilum."""
    hx, hy = lung.cx - lung.s * 0.70 * lung.ax, lung.cy + 0.12 * lung.ay
    dx, dy = (lung.X - hx) * lung.s, lung.Y - hy
    r = np.sqrt(dx * dx + dy * dy)
    c = 0.5 + 0.5 * np.cos(17.0 * np.arctan2(dy, dx) + phase + 2.2 * wiggle)
    streaks = (c * c * c) ** 2  # cos^6: thin bright lines
    return MARKING_BRIGHTNESS * streaks * np.exp(r * (-1.0 / 0.16)) + HILUM_BRIGHTNESS * np.exp(-((r * (1.0 / 0.045)) ** 2))


def _draw_lung_finding(
    img: np.ndarray,
    mask: np.ndarray,
    finding: Mapping[str, str],
    lung: _Lung,
    texture: np.ndarray,
    rng: np.random.Generator,
    px: float,
) -> None:
    """Draw one effusion/opacity/nodule/atelectasis into ``lung`` (crops of img/mask, in place)."""
    name, severity = finding["finding"], finding["severity"]
    X, Y = lung.X, lung.Y
    if name == "effusion":
        height = EFFUSION_HEIGHT[severity] * lung.height
        lateral = np.clip(lung.s * (X - lung.cx) / lung.ax, 0.0, 1.0)
        level = lung.base - height - EFFUSION_MENISCUS * lung.height * lateral**2  # meniscus
        fluid = lung.soft * _ramp(Y - level, 2 * px)
        # denser toward the base, where the fluid is thickest
        density = FLUID_DENSITY - 0.06 * np.clip((level - Y) / height + 1.0, 0.0, 1.0)
        img *= 1.0 - 0.92 * fluid
        img += 0.92 * fluid * density
        mask |= lung.hard & (Y > level)
    elif name == "opacity":
        cx = lung.lesion_x(finding["zone"], rng, -0.1, 0.3)
        cy = lung.zone_y(finding["zone"]) + rng.uniform(-0.03, 0.03)
        sigma = OPACITY_SIGMA[severity]
        blob = np.zeros(lung.soft.shape, dtype=DTYPE)
        for _ in range(3):  # a few overlapping puffs make an irregular, hazy patch
            ox, oy = rng.normal(0.0, 0.6 * sigma, size=2)
            k = -0.5 / (sigma * rng.uniform(0.7, 1.2)) ** 2
            blob += np.exp((X - cx - ox) ** 2 * k) * np.exp((Y - cy - oy) ** 2 * k)  # separable
        blob /= blob.max()
        img += OPACITY_BRIGHTNESS * blob * (0.8 + 0.2 * np.tanh(texture)) * lung.soft  # mottled
        mask |= lung.hard & (blob > 0.4)
    elif name == "nodule":
        radius = NODULE_RADIUS[severity]
        cx = lung.lesion_x(finding["zone"], rng, -0.15, 0.3)
        cy = lung.zone_y(finding["zone"]) + rng.uniform(-0.03, 0.03)
        d = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2)
        dome = np.sqrt(np.clip(1.0 - (d / radius) ** 2, 0.0, 1.0))  # brighter centre: a sphere
        img += NODULE_BRIGHTNESS * (0.55 * _ramp(radius - d, px) + 0.45 * dome)
        mask |= d <= radius
    elif name == "atelectasis":
        half_width = ATELECTASIS_HALF_WIDTH[severity]
        cx = lung.lesion_x(finding["zone"], rng, -0.05, 0.15)
        cy = lung.zone_y(finding["zone"]) + rng.uniform(-0.02, 0.02)
        # a plate lying nearly horizontally, its lateral end tipped slightly
        half_len = 0.5 * lung.ax * rng.uniform(1.0, 1.4)
        tilt = lung.s * rng.uniform(-0.30, 0.10)
        ux, uy = math.cos(tilt) * lung.s, math.sin(tilt)
        d = _segment_distance(X, Y, (cx - half_len * ux, cy - half_len * uy), (cx + half_len * ux, cy + half_len * uy))
        img += ATELECTASIS_BRIGHTNESS * _ramp(half_width - d, px) * lung.soft
        mask |= lung.hard & (d <= half_width)
    else:
        raise ValueError(f"not a lung finding: {name!r}")


def _blend_ellipse(
    img: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    ellipse: tuple[float, float, float, float],
    opacity: float,
    value: float | np.ndarray,
    edge: float,
) -> None:
    """Blend ``value`` (a scalar or a full-size array) over the ellipse (cx, cy, ax, ay), in place,
    touching only its bounding box."""
    cx, cy, ax, ay = ellipse
    box = (_span(Y, cy - ay - 2 * edge, cy + ay + 2 * edge), _span(X, cx - ax - 2 * edge, cx + ax + 2 * edge))
    alpha = opacity * _ramp(-_ellipse_distance(X[:, box[1]], Y[box[0], :], cx, cy, ax, ay), edge)
    target = value[box] if isinstance(value, np.ndarray) else value
    img[box] = img[box] * (1.0 - alpha) + alpha * target


def render_study(
    findings: Sequence[Mapping[str, str]],
    anatomy: Anatomy,
    rng: np.random.Generator,
    image_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one radiograph with ``findings``.

    Returns ``(image, mask)``: two ``(image_size, image_size)`` uint8 arrays, the image in
    display orientation (patient's left on the image's right) and the union of the lesion masks
    as 0/255. The cardiomegaly mask is the enlarged cardiac silhouette (the finding *is* the
    silhouette); every other mask is the lesion itself.
    """
    S = int(image_size)
    a = anatomy
    x, y = _axes(S)
    shift_x, shift_y = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
    X = (x - DTYPE(shift_x)) * DTYPE(1.0 / a.body_scale)  # (1, S)
    Y = (y - DTYPE(shift_y)) * DTYPE(1.0 / a.body_scale)  # (S, 1)
    px = 1.0 / (S * a.body_scale)  # one pixel in body units: edges are anti-aliased over it
    inspiration = rng.uniform(0.95, 1.05)
    lungs = {s: _lung(X, Y, a, s, inspiration, px) for s in (-1.0, 1.0)}
    by_side = [(f, [lungs[SIDE_SIGN[f["side"]]]] if f["side"] in SIDE_SIGN else list(lungs.values())) for f in findings]
    mask = np.zeros((S, S), dtype=bool)

    # --- body ---------------------------------------------------------------------------------
    body = np.clip((1.0 - np.abs(X * (1 / 0.44)) ** 4 - np.abs((Y - 0.06) * (1 / 0.60)) ** 4) * (1 / 0.08), 0.0, 1.0)
    # thinner soft tissue toward the flanks, so the body is not a flat slab
    img = BACKGROUND + body * (a.tissue * (1.0 - 0.35 * (X * (1 / 0.44)) ** 2))
    # the upper abdomen under the diaphragm is as dense as the heart, hiding its lower border
    img += ABDOMEN_EXTRA * body * _ramp(Y - a.lung_cy - 0.2, 0.08)
    texture = _smooth_noise(rng, S, 14)
    wiggle = _smooth_noise(rng, S, 6)

    # --- pneumothorax: where the lung has fallen away from the chest wall -------------------------
    pneumothorax = np.zeros((S, S), dtype=DTYPE)
    pleural_line = np.zeros((S, S), dtype=DTYPE)
    for f, sides in by_side:
        if f["finding"] != "pneumothorax":
            continue
        for lung in sides:
            gap = PNEUMOTHORAX_GAP[f["severity"]]
            if f["zone"] == "apical":  # the lung drops away from the apex
                cx, ax = lung.cx - lung.s * 0.25 * gap, lung.ax - 0.25 * gap
                cy, ay = lung.cy + 0.5 * gap, lung.ay - 0.5 * gap
            else:  # lateral: the lung falls away from the chest wall
                cx, ax = lung.cx - lung.s * 0.5 * gap, lung.ax - 0.5 * gap
                cy, ay = lung.cy + 0.15 * gap, lung.ay - 0.15 * gap
            collapsed = _ellipse_distance(lung.X, lung.Y, cx, cy, ax, ay)
            pneumothorax[lung.box] = np.maximum(pneumothorax[lung.box], lung.soft * _ramp(collapsed, px))
            line = lung.soft * _ramp(0.9 * px - np.abs(collapsed), px)
            pleural_line[lung.box] = np.maximum(pleural_line[lung.box], line)
            mask[lung.box] |= lung.hard & (collapsed > 0)

    # --- lungs: air, markings (none beyond a pleural line) --------------------------------------
    for lung in lungs.values():
        detail = _markings(lung, wiggle[lung.box], 6.0 * a.rib_phase) + 0.025 * texture[lung.box]
        img[lung.box] += lung.soft * ((1.0 - pneumothorax[lung.box]) * detail - LUNG_AIR)
    img -= PNEUMOTHORAX_DARKENING * pneumothorax

    # --- bones ------------------------------------------------------------------------------
    lung_any = next(iter(lungs.values()))
    cage_ax, cage_ay = a.lung_offset + a.lung_ax + 0.02, lung_any.ay + 0.03
    cage_box = (_span(Y, lung_any.cy - 0.01 - cage_ay, lung_any.base + 0.05), _span(X, -cage_ax - 0.02, cage_ax + 0.02))
    Xc, Yc = X[:, cage_box[1]], Y[cage_box[0], :]
    ax_abs = np.abs(Xc)
    rib_y = -0.12 * ax_abs + 1.6 * (ax_abs - 0.20) ** 2  # arches rising from the spine, falling laterally
    ribs = 0.5 + 0.5 * np.cos((Yc - rib_y) * (2 * math.pi / a.rib_spacing) + a.rib_phase)
    ribs *= ribs
    ribs *= ribs  # a cos^4 profile: bands narrow enough to read as ribs, wide enough not to alias at 64 px
    cage = _ramp(-_ellipse_distance(Xc, Yc, 0.0, lung_any.cy - 0.01, cage_ax, cage_ay), 4 * px)
    cage *= _ramp(lung_any.base + 0.02 - Yc, 4 * px)
    img[cage_box] += RIB_BRIGHTNESS * ribs * cage * (1.0 - 0.6 * pneumothorax[cage_box])
    rows = _span(Y, lung_any.top - 0.12, lung_any.top + 0.06)  # clavicles live in this band
    for s in (-1.0, 1.0):  # nearly horizontal, the lateral end a little higher
        d = _segment_distance(X, Y[rows], (s * 0.04, lung_any.top + 0.005), (s * 0.34, lung_any.top - 0.06))
        img[rows] += CLAVICLE_BRIGHTNESS * body[rows] * _ramp(0.016 - d, px)
    img += SPINE_BRIGHTNESS * body * _ramp(0.034 - np.abs(X), px)

    # --- mediastinum: heart and aortic knob ---------------------------------------------------
    hax, hay, hcx, hcy = a.heart_ax, a.heart_ay, a.heart_cx, a.heart_cy
    for f, _ in by_side:
        if f["finding"] == "cardiomegaly":
            k = CARDIOMEGALY_SCALE[f["severity"]]
            # left-ventricular enlargement: the heart grows toward the patient's left, sitting
            # on the diaphragm (its lower border stays put, so it widens and rises)
            new_ay = (1.0 + 0.5 * (k - 1.0)) * hay
            hcx += 0.6 * (k - 1.0) * hax
            hcy += hay - new_ay
            hax, hay = k * hax, new_ay
            heart_box = (_span(Y, hcy - hay - 3 * px, hcy + hay + 3 * px), _span(X, hcx - hax - 3 * px, hcx + hax + 3 * px))
            mask[heart_box] |= _ellipse_distance(X[:, heart_box[1]], Y[heart_box[0], :], hcx, hcy, hax, hay) < 0
    _blend_ellipse(img, X, Y, (hcx, hcy, hax, hay), HEART_OPACITY, HEART_DENSITY + 0.02 * texture, 1.5 * px)
    # the aortic knob bulges from the mediastinum into the left upper lung (not a free disc,
    # which would look like a nodule in every image)
    _blend_ellipse(img, X, Y, (0.030, lung_any.top + 0.17, 0.045, 0.035), 0.8, HEART_DENSITY - 0.06, px)

    # --- lung findings --------------------------------------------------------------------------
    for f, sides in by_side:
        if f["finding"] in ("pneumothorax", "cardiomegaly"):
            continue
        for lung in sides:
            _draw_lung_finding(img[lung.box], mask[lung.box], f, lung, texture[lung.box], rng, px)
    img += PLEURAL_LINE_BRIGHTNESS * pleural_line

    # --- acquisition: exposure, contrast, noise ----------------------------------------------
    img += 0.02 * _smooth_noise(rng, S, 3)  # uneven exposure
    gamma = rng.uniform(0.85, 1.2)
    contrast = rng.uniform(0.9, 1.12)
    brightness = rng.uniform(-0.04, 0.04)
    img = np.clip(img, 0.0, 1.0) ** DTYPE(gamma) * DTYPE(contrast) + DTYPE(brightness)
    img += DTYPE(rng.uniform(*NOISE_SIGMA)) * rng.standard_normal((S, S), dtype=DTYPE)
    image = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255
