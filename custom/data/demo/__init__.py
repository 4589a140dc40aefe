"""Seeded synthetic chest-radiograph demo data: images, lesion masks, free-text reports, labels.

Every bundle runs out of the box on this data (DESIGN §6), so it has to be *learnable in the way
RECLF cares about*: each finding is drawn at a side, a zone and a severity, and the report names
it with its location in varied wording. About a third of the studies carry two findings on
opposite sides (e.g. a left effusion and a right opacity): the bag of words "left, right,
effusion, opacity" then fits two different images, so only a model that binds a disease word to
its location word can tell them apart.

Conventions
-----------
* Radiological orientation: the patient's LEFT is on the IMAGE'S RIGHT. Arrays are ``(H, W)`` with
  ``array[row, col]``, row top→bottom and col left→right as displayed, written with
  ``PIL.Image.fromarray``; a lesion of the patient's left lung therefore has mask columns
  ``> W / 2``.
* Geometry is built in "body units": image coordinates centred on the image (``[-0.5, 0.5]``),
  shifted and scaled per study, so every shape is a closed-form function of two broadcast
  coordinate vectors (``X`` of shape ``(1, S)``, ``Y`` of shape ``(S, 1)``), in float32, with
  everything inside a lung computed on the lung's bounding box. No per-pixel loops: the default
  1680 studies at 128 px take ~12 s on one core, a quarter of it PNG encoding.
* Randomness: one ``numpy.random.Generator`` per (seed, purpose, index), so a study's image and
  report do not depend on how many studies come before it, and the same seed gives byte-identical
  PNGs and datalist.

Only numpy and Pillow are imported here, so ``import custom.demo`` stays fast (no torch/monai).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "FINDINGS",
    "LATERAL_FINDINGS",
    "SIDES",
    "ZONES",
    "SEVERITIES",
    "ZONES_BY_FINDING",
    "FINDING_TEMPLATES",
    "Anatomy",
    "sample_findings",
    "describe_finding",
    "make_report",
    "render_study",
    "generate_demo",
    "ensure_demo",
    "ensure_default_demo",
    "main_demo",
]

# --------------------------------------------------------------------------------------------
# Vocabulary of the structured findings
# --------------------------------------------------------------------------------------------

FINDINGS: tuple[str, ...] = ("opacity", "effusion", "nodule", "pneumothorax", "atelectasis", "cardiomegaly")
"""Label names, in datalist order (``label_names``)."""

LATERAL_FINDINGS: tuple[str, ...] = ("opacity", "effusion", "nodule", "pneumothorax", "atelectasis")
"""Findings that sit in one lung (side ``left``/``right``); cardiomegaly is central (side ``none``)."""

BILATERAL_FINDINGS: tuple[str, ...] = ("opacity", "effusion", "atelectasis")
"""Findings that may also be drawn in both lower zones at once (side ``bilateral``)."""

SIDES: tuple[str, ...] = ("left", "right", "bilateral", "none")
SEVERITIES: tuple[str, ...] = ("small", "moderate", "large")
ZONES: tuple[str, ...] = ("upper", "middle", "lower", "apical", "lateral", "none")

ZONES_BY_FINDING: dict[str, tuple[str, ...]] = {
    "opacity": ("upper", "middle", "lower"),
    "effusion": ("lower",),  # fluid layers at the base: never anywhere else on an erect film
    "nodule": ("upper", "middle", "lower"),
    "pneumothorax": ("apical", "lateral"),  # air collects at the apex / along the lateral wall
    "atelectasis": ("middle", "lower"),
    "cardiomegaly": ("none",),
}

# Image x-direction of each side: radiological convention puts the patient's left on the image's
# right, i.e. at positive x (column index > W/2).
SIDE_SIGN: dict[str, float] = {"left": 1.0, "right": -1.0}

# --------------------------------------------------------------------------------------------
# Study mix (DESIGN §6: >= 30% with two findings on opposite sides)
# --------------------------------------------------------------------------------------------

FRACTION_NORMAL = 0.25
FRACTION_OPPOSITE_PAIR = 0.35  # two different lateral findings, one per side
# the remainder (~40%) carries exactly one finding
P_BILATERAL = 0.15  # a single opacity/effusion/atelectasis drawn on both sides
P_EXTRA_CARDIOMEGALY = 0.2  # an opposite-side pair also shows an enlarged heart
P_SECOND_STUDY = 0.25  # a patient gets a second (follow-up) study, in the same split

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

# --------------------------------------------------------------------------------------------
# Report phrase tables
# --------------------------------------------------------------------------------------------
# Slots: {side} left/right, {zone} a zone noun ("upper lobe"), {zadj}/{znoun} pneumothorax zone
# adjective/noun, {sev} a severity adjective, {a_sev} the same with its article, {sevadv} a
# severity adverb (cardiomegaly). Every lateral template names the side, so a finding is never
# reported without its location.

ZONE_WORDS: dict[str, tuple[str, ...]] = {
    "upper": ("upper lobe", "upper zone", "upper lung"),
    "middle": ("mid lung", "mid zone", "midlung zone"),
    "lower": ("lower lobe", "lung base", "lower zone"),
    "apical": ("apex",),
    "lateral": ("lateral chest wall", "lateral hemithorax"),
    "none": ("",),
}
ZONE_ADJECTIVES: dict[str, str] = {"apical": "apical", "lateral": "lateral"}

SEVERITY_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "opacity": {"small": ("small", "faint", "subtle"), "moderate": ("moderate",), "large": ("large", "dense", "extensive")},
    "effusion": {"small": ("small", "trace"), "moderate": ("moderate", "moderate-sized"), "large": ("large", "sizable")},
    "nodule": {"small": ("small", "tiny", "subcentimeter"), "moderate": ("moderate-sized", "medium"), "large": ("large", "mass-like")},
    "pneumothorax": {"small": ("small", "tiny"), "moderate": ("moderate", "moderate-sized"), "large": ("large", "sizable")},
    "atelectasis": {"small": ("mild", "minimal"), "moderate": ("moderate",), "large": ("extensive", "marked")},
    "cardiomegaly": {"small": ("mild",), "moderate": ("moderate",), "large": ("marked", "severe")},
}
SEVERITY_ADVERBS: dict[str, tuple[str, ...]] = {
    "small": ("mildly", "slightly"),
    "moderate": ("moderately",),
    "large": ("markedly", "severely"),
}

FINDING_TEMPLATES: dict[str, tuple[str, ...]] = {
    "opacity": (
        "{sev} opacity in the {side} {zone}.",
        "there is {a_sev} airspace opacity in the {side} {zone}.",
        "hazy {side} {zone} opacity, {sev} in extent, may represent pneumonia.",
        "{sev} patchy consolidation in the {side} {zone}.",
        "ill-defined {sev} opacity projecting over the {side} {zone}.",
        "{side} {zone} airspace disease, {sev}, concerning for infection.",
        "focal {sev} opacity at the {side} {zone}.",
    ),
    "effusion": (
        "{sev} {side} pleural effusion.",
        "there is {a_sev} pleural effusion on the {side}.",
        "blunting of the {side} costophrenic angle consistent with {a_sev} effusion.",
        "{sev} {side}-sided pleural effusion with a meniscus.",
        "{side} effusion, {sev} in size.",
        "{a_sev} amount of pleural fluid layers at the {side} base.",
        "{sev} {side} pleural effusion obscures the {side} hemidiaphragm.",
    ),
    "nodule": (
        "{sev} nodule in the {side} {zone}.",
        "there is {a_sev} rounded nodular density projecting over the {side} {zone}.",
        "{a_sev} well-circumscribed pulmonary nodule is seen in the {side} {zone}; CT is recommended.",
        "{side} {zone} nodule, {sev}.",
        "{sev} round density in the {side} {zone}, likely a nodule.",
        "focal {sev} nodule noted at the {side} {zone}.",
    ),
    "pneumothorax": (
        "{sev} {side} {zadj} pneumothorax.",
        "there is {a_sev} pneumothorax at the {side} {znoun}.",
        "visible pleural line at the {side} {znoun} consistent with {a_sev} pneumothorax.",
        "{side}-sided {zadj} pneumothorax, {sev} in size.",
        "absent lung markings beyond a pleural line at the {side} {znoun}, compatible with {a_sev} pneumothorax.",
        "{a_sev} {side} pneumothorax is seen at the {znoun}.",
    ),
    "atelectasis": (
        "{sev} linear atelectasis in the {side} {zone}.",
        "plate-like atelectasis at the {side} {zone}, {sev}.",
        "{sev} {side} {zone} subsegmental atelectasis.",
        "there is {a_sev} band of atelectasis in the {side} {zone}.",
        "linear density in the {side} {zone} likely reflecting {sev} atelectasis.",
        "discoid atelectasis in the {side} {zone}, {sev}.",
    ),
    "cardiomegaly": (
        "the heart is {sevadv} enlarged.",
        "{sev} cardiomegaly.",
        "the cardiac silhouette is {sevadv} enlarged.",
        "enlarged cardiac silhouette consistent with {sev} cardiomegaly.",
        "the cardiothoracic ratio is increased, in keeping with {sev} cardiomegaly.",
        "there is {sev} cardiomegaly.",
    ),
}
"""Sentence templates per finding (side ``left``/``right``, or central for cardiomegaly)."""

BILATERAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "opacity": (
        "{sev} bibasilar opacities.",
        "{sev} opacities at both lung bases.",
        "bilateral lower lobe airspace opacities, {sev}.",
    ),
    "effusion": (
        "{sev} bilateral pleural effusions.",
        "blunting of both costophrenic angles, consistent with {sev} bilateral effusions.",
        "{sev} effusions are present on both sides.",
    ),
    "atelectasis": (
        "{sev} bibasilar atelectasis.",
        "{sev} linear atelectasis at both lung bases.",
        "bilateral basilar atelectasis, {sev}.",
    ),
}

IMPRESSION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "opacity": ("{side} {zone} opacity, possibly pneumonia", "{side} {zone} airspace opacity"),
    "effusion": ("{sev} {side} pleural effusion", "{side} pleural effusion"),
    "nodule": ("{side} {zone} nodule", "{sev} {side} pulmonary nodule"),
    "pneumothorax": ("{sev} {side} pneumothorax", "{side} {zadj} pneumothorax"),
    "atelectasis": ("{side} {zone} atelectasis", "{sev} {side} atelectasis"),
    "cardiomegaly": ("{sev} cardiomegaly", "cardiomegaly"),
}
BILATERAL_IMPRESSIONS: dict[str, str] = {
    "opacity": "bibasilar opacities",
    "effusion": "bilateral pleural effusions",
    "atelectasis": "bibasilar atelectasis",
}

NEGATIONS: dict[str, tuple[str, ...]] = {
    "opacity": ("no focal consolidation.", "no focal airspace opacity.", "no airspace disease.", "no consolidation."),
    "effusion": ("no pleural effusion.", "no effusion.", "the costophrenic angles are sharp.", "no pleural effusions are seen."),
    "nodule": ("no suspicious pulmonary nodules.", "no nodules or masses.", "no focal nodule."),
    "pneumothorax": ("no pneumothorax.", "there is no pneumothorax.", "no evidence of pneumothorax."),
    "atelectasis": ("no atelectasis.", "no significant atelectasis."),
    "cardiomegaly": (
        "heart size is normal.",
        "the cardiac silhouette is within normal limits.",
        "normal heart size.",
        "the heart is not enlarged.",
        "the cardiomediastinal silhouette is normal.",
    ),
}
# Radiologists often negate effusion and pneumothorax together.
NEGATION_EFFUSION_PNEUMOTHORAX: tuple[str, ...] = (
    "no pleural effusion or pneumothorax.",
    "no effusion or pneumothorax.",
    "there is no pleural effusion or pneumothorax.",
)
NORMAL_LUNG_STATEMENTS: tuple[str, ...] = (
    "the lungs are clear.",
    "lungs are clear bilaterally.",
    "the lungs are well expanded and clear.",
    "clear lungs.",
    "no acute cardiopulmonary process.",
    "no focal lung abnormality.",
)
FILLER: tuple[str, ...] = (
    "PA and lateral views of the chest.",
    "PA view of the chest.",
    "frontal view of the chest.",
    "osseous structures are intact.",
    "no acute osseous abnormality.",
    "comparison: none.",
    "the mediastinal contours are normal.",
    "soft tissues are unremarkable.",
    "the visualized upper abdomen is unremarkable.",
)
# Dictated "normal" macros: radiologists reuse them verbatim, so identical reports recur across
# studies, as in real data (the contrastive losses treat identical reports as positives).
NORMAL_MACROS: tuple[str, ...] = (
    "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax. Impression: No acute cardiopulmonary process.",
    "PA and lateral views of the chest. The lungs are clear. The cardiomediastinal silhouette is normal. No acute osseous abnormality.",
    "No acute cardiopulmonary abnormality.",
)
NORMAL_IMPRESSIONS: tuple[str, ...] = (
    "no acute cardiopulmonary process.",
    "normal chest radiograph.",
    "no acute cardiopulmonary abnormality.",
)

P_NEGATE_ABSENT = 0.3  # chance that an absent finding is explicitly negated
P_NEGATE_HEART = 0.7  # heart size is mentioned in most reports
P_JOINT_NEGATION = 0.5  # "no pleural effusion or pneumothorax" instead of two sentences
P_NORMAL_LUNGS = 0.9  # "the lungs are clear" when no lung finding is present
P_IMPRESSION = 0.6
P_NORMAL_MACRO = 0.3  # a normal study is reported with one of NORMAL_MACROS
FILLER_COUNT = (1, 2)  # inclusive range of filler sentences per report

# Noisy radiographs barely compress: a fast zlib level writes ~25% quicker for ~8% more bytes.
PNG_COMPRESS_LEVEL = 2

# RNG purposes: independent streams per study so that images and reports are stable.
_RNG_ANATOMY, _RNG_RENDER, _RNG_REPORT, _RNG_FINDINGS = 1, 2, 3, 4


def _rng(seed: int, purpose: int, index: int) -> np.random.Generator:
    """An independent, reproducible generator for one (seed, purpose, index)."""
    return np.random.default_rng([int(seed), purpose, int(index)])


# --------------------------------------------------------------------------------------------
# Structured findings
# --------------------------------------------------------------------------------------------


def _finding(rng: np.random.Generator, name: str, side: str) -> dict[str, str]:
    """One finding dict with a zone and severity drawn for ``name``."""
    if name == "cardiomegaly":
        zone = "none"
    elif side == "bilateral":
        zone = "lower"  # bilateral findings are drawn and described at the bases
    else:
        zone = str(rng.choice(ZONES_BY_FINDING[name]))
    return {"finding": name, "side": side, "zone": zone, "severity": str(rng.choice(SEVERITIES))}


def sample_findings(rng: np.random.Generator, kind: str | None = None) -> list[dict[str, str]]:
    """Draw the findings of one study.

    ``kind`` is ``"normal"`` (no finding), ``"single"`` (one finding, any type, occasionally
    bilateral) or ``"pair"`` (two different lateral findings on opposite sides, sometimes with
    cardiomegaly as well); ``None`` draws the kind with the default study mix.
    """
    if kind is None:
        u = rng.random()
        kind = "normal" if u < FRACTION_NORMAL else "pair" if u < FRACTION_NORMAL + FRACTION_OPPOSITE_PAIR else "single"
    if kind == "normal":
        return []
    if kind == "single":
        name = str(rng.choice(FINDINGS))
        if name == "cardiomegaly":
            side = "none"
        elif name in BILATERAL_FINDINGS and rng.random() < P_BILATERAL:
            side = "bilateral"
        else:
            side = str(rng.choice(("left", "right")))
        return [_finding(rng, name, side)]
    if kind == "pair":
        first, second = (str(n) for n in rng.choice(LATERAL_FINDINGS, size=2, replace=False))
        side = str(rng.choice(("left", "right")))
        other = "right" if side == "left" else "left"
        found = [_finding(rng, first, side), _finding(rng, second, other)]
        if rng.random() < P_EXTRA_CARDIOMEGALY:
            found.append(_finding(rng, "cardiomegaly", "none"))
        return found
    raise ValueError(f"kind: expected normal/single/pair, got {kind!r}")


def _labels(findings: Sequence[Mapping[str, str]]) -> dict[str, int]:
    present = {f["finding"] for f in findings}
    return {name: int(name in present) for name in FINDINGS}


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _slots(finding: Mapping[str, str], rng: np.random.Generator) -> dict[str, str]:
    """Fill every template slot for one finding (unused slots are ignored by str.format)."""
    name, zone = finding["finding"], finding["zone"]
    sev = str(rng.choice(SEVERITY_WORDS[name][finding["severity"]]))
    return {
        "side": finding["side"],
        "zone": str(rng.choice(ZONE_WORDS.get(zone, (zone,)))),
        "zadj": ZONE_ADJECTIVES.get(zone, zone),
        "znoun": ZONE_WORDS.get(zone, (zone,))[0],
        "sev": sev,
        "a_sev": f"{_article(sev)} {sev}",
        "sevadv": str(rng.choice(SEVERITY_ADVERBS[finding["severity"]])),
    }


def describe_finding(finding: Mapping[str, str], rng: np.random.Generator) -> str:
    """One lower-case sentence naming ``finding`` with its side, zone and severity."""
    table = BILATERAL_TEMPLATES if finding["side"] == "bilateral" else FINDING_TEMPLATES
    template = str(rng.choice(table[finding["finding"]]))
    return template.format(**_slots(finding, rng))


def _impression_phrase(finding: Mapping[str, str], rng: np.random.Generator) -> str:
    if finding["side"] == "bilateral":
        return BILATERAL_IMPRESSIONS[finding["finding"]]
    return str(rng.choice(IMPRESSION_TEMPLATES[finding["finding"]])).format(**_slots(finding, rng))


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_report(findings: Sequence[Mapping[str, str]], rng: np.random.Generator) -> str:
    """A free-text report for a study with ``findings`` (list of finding dicts; empty = normal).

    The findings paragraph holds one sentence per finding (with its location), negations of
    some absent findings, a normal-lungs statement when no lung finding is present, and 1-2
    filler sentences, in random order; an ``Impression:`` line follows in most reports. Some
    normal studies get a verbatim macro instead, so identical reports recur. Plain ASCII,
    sentence case.
    """
    if not findings and rng.random() < P_NORMAL_MACRO:
        return str(rng.choice(NORMAL_MACROS))
    present = {f["finding"] for f in findings}
    sentences = [describe_finding(f, rng) for f in findings]

    absent = [name for name in FINDINGS if name not in present]
    if "effusion" in absent and "pneumothorax" in absent and rng.random() < P_JOINT_NEGATION:
        sentences.append(str(rng.choice(NEGATION_EFFUSION_PNEUMOTHORAX)))
        absent = [name for name in absent if name not in ("effusion", "pneumothorax")]
    for name in absent:
        p = P_NEGATE_HEART if name == "cardiomegaly" else P_NEGATE_ABSENT
        if rng.random() < p:
            sentences.append(str(rng.choice(NEGATIONS[name])))
    if not present & set(LATERAL_FINDINGS) and rng.random() < P_NORMAL_LUNGS:
        sentences.append(str(rng.choice(NORMAL_LUNG_STATEMENTS)))
    n_filler = int(rng.integers(FILLER_COUNT[0], FILLER_COUNT[1] + 1))
    sentences.extend(str(s) for s in rng.choice(FILLER, size=n_filler, replace=False))

    order = rng.permutation(len(sentences))
    text = " ".join(_sentence_case(sentences[i]) for i in order)
    if rng.random() < P_IMPRESSION:
        if findings:
            impression = "; ".join(_impression_phrase(f, rng) for f in findings) + "."
        else:
            impression = str(rng.choice(NORMAL_IMPRESSIONS))
        text += " Impression: " + _sentence_case(impression)
    return text


# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _plan_split(rng: np.random.Generator, n: int) -> tuple[list[int], list[str]]:
    """Studies per patient (1 or 2, summing to ``n``) and the shuffled kind of each study.

    Kinds follow exact quotas per split (not coin flips), so even a 20-study split has its
    share of opposite-side pairs.
    """
    studies: list[int] = []
    remaining = n
    while remaining > 0:
        k = 2 if remaining >= 2 and rng.random() < P_SECOND_STUDY else 1
        studies.append(k)
        remaining -= k
    n_pair = math.ceil(FRACTION_OPPOSITE_PAIR * n)
    n_normal = min(round(FRACTION_NORMAL * n), n - n_pair)
    kinds = ["pair"] * n_pair + ["normal"] * n_normal + ["single"] * (n - n_pair - n_normal)
    return studies, [kinds[i] for i in rng.permutation(n)]


def _save_png(array: np.ndarray, path: str) -> None:
    """Write a PNG atomically, so a concurrent reader never sees a half-written file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Image.fromarray(array).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(tmp, path)


def _write_json_atomic(obj: Any, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def generate_demo(
    out_dir: str,
    n_train: int = 1200,
    n_val: int = 240,
    n_test: int = 240,
    image_size: int = 128,
    seed: int = 0,
) -> str:
    """Generate the demo dataset into ``out_dir`` and return the path of its ``datalist.json``.

    Writes ``images/<study>.png`` (8-bit grayscale), ``masks/<study>.png`` (0/255, possibly
    empty) and, last and atomically, ``datalist.json`` (MONAI format, paths relative to
    ``out_dir``): its presence means the data is complete. Splits are by patient.
    """
    n_train, n_val, n_test, image_size, seed = int(n_train), int(n_val), int(n_test), int(image_size), int(seed)
    if min(n_train, n_val, n_test) < 0 or image_size < 16:
        raise ValueError("split sizes must be >= 0 and image_size >= 16")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)

    plan_rng = np.random.default_rng([seed, 0])
    splits = {"training": n_train, "validation": n_val, "test": n_test}
    plans = {key: _plan_split(plan_rng, n) for key, n in splits.items()}
    n_patients = sum(len(studies) for studies, _ in plans.values())
    # Patient numbers are shuffled so that ids do not reveal the split.
    patient_numbers = plan_rng.permutation(n_patients)

    datalist: dict[str, Any] = {key: [] for key in splits}
    patient, study = 0, 0
    for key, (studies, kinds) in plans.items():
        for k in studies:
            pid = f"demo-{int(patient_numbers[patient]):05d}"
            anatomy = Anatomy.sample(_rng(seed, _RNG_ANATOMY, patient))
            for visit in range(k):
                kind = kinds[len(datalist[key])]
                findings = sample_findings(_rng(seed, _RNG_FINDINGS, study), kind)
                image, mask = render_study(findings, anatomy, _rng(seed, _RNG_RENDER, study), image_size)
                name = f"{pid}-s{visit + 1}.png"
                _save_png(image, os.path.join(out_dir, "images", name))
                _save_png(mask, os.path.join(out_dir, "masks", name))
                datalist[key].append(
                    {
                        "image": f"images/{name}",
                        "mask": f"masks/{name}",
                        "report": make_report(findings, _rng(seed, _RNG_REPORT, study)),
                        "labels": _labels(findings),
                        "patient_id": pid,
                        "view": "PA",
                        "findings": findings,
                    }
                )
                study += 1
            patient += 1

    datalist["label_names"] = list(FINDINGS)
    datalist["description"] = (
        "reclf synthetic chest-radiograph demo: images, lesion masks, reports and labels; "
        "patient's left on the image's right; splits by patient"
    )
    datalist["demo"] = {"seed": seed, "image_size": image_size, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    path = os.path.join(out_dir, "datalist.json")
    _write_json_atomic(datalist, path)
    return path


def ensure_demo(dataset_dir: str, datalist: str | None = None, **kwargs: Any) -> str:
    """Return ``datalist`` (default ``dataset_dir/datalist.json``) if it exists, else make the demo.

    The demo is generated into ``dataset_dir`` (``kwargs`` go to :func:`generate_demo`). When an
    explicit ``datalist`` path other than ``dataset_dir/datalist.json`` is missing, the generated
    datalist is also written there (its paths stay relative to ``dataset_dir``, DESIGN §4). To
    protect real data, a ``dataset_dir`` holding anything besides a previous (interrupted)
    demo's ``images/``/``masks/`` and dotfiles is refused with ``FileExistsError``.
    """
    default = os.path.join(dataset_dir, "datalist.json")
    target = datalist if datalist not in (None, "", "none", "None") else default
    if os.path.exists(target):
        return target
    if os.path.isdir(dataset_dir):
        ours = ("images", "masks", "datalist.json")
        foreign = [n for n in os.listdir(dataset_dir) if n not in ours and not n.endswith(".tmp") and not n.startswith(".")]
        if foreign:
            raise FileExistsError(
                f"no datalist at {target}, and {dataset_dir} is not empty ({sorted(foreign)[:5]}); "
                "refusing to generate demo data there: pass the right datalist or an empty dataset_dir"
            )
    if not os.path.exists(default):
        sizes = {k: kwargs.get(k, v) for k, v in (("n_train", 1200), ("n_val", 240), ("n_test", 240))}
        print(f"reclf demo: no datalist at {target}; generating {sum(map(int, sizes.values()))} demo studies into {dataset_dir}", flush=True)
        generate_demo(dataset_dir, **kwargs)
    if os.path.abspath(target) != os.path.abspath(default):
        with open(default, encoding="ascii") as fh:
            _write_json_atomic(json.load(fh), target)
    return target


def ensure_default_demo(datalist: str, demo_dir: str = "data/demo") -> str | None:
    """Generate the demo into ``demo_dir`` only when ``datalist`` is the demo's own datalist.

    The bundle configs call this in ``initialize``: a user's own (even misspelt) datalist never
    triggers generation; it fails later with a clear "datalist not found" instead.
    """
    if os.path.abspath(datalist) != os.path.abspath(os.path.join(demo_dir, "datalist.json")):
        return None
    return ensure_demo(demo_dir)


def _as_bool(value: Any) -> bool:
    """Strict bool for command-line values (fire hands ``--force false`` over as a string)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def main_demo(
    out: str = "data/demo",
    n_train: int = 1200,
    n_val: int = 240,
    n_test: int = 240,
    image_size: int = 128,
    seed: int = 0,
    force: bool = False,
) -> str:
    """Command-line entry (``python -m custom demo``): generate the demo data, return its datalist.

    An existing datalist is kept unless ``force`` is true.
    """
    path = os.path.join(out, "datalist.json")
    if os.path.exists(path) and not _as_bool(force):
        print(f"reclf demo: {path} exists (pass --force true to regenerate)")
        return path
    start = time.perf_counter()
    path = generate_demo(out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size, seed=seed)
    n = int(n_train) + int(n_val) + int(n_test)
    print(f"reclf demo: wrote {n} studies to {out} in {time.perf_counter() - start:.1f} s")
    return path
