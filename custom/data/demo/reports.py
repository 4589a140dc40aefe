"""The demo's structured findings and their reports: the finding vocabulary (finding, side, zone,
severity), the study mix, the phrase tables (>= 5 wordings per finding, negations, normal
statements, filler) and the seeded sampler and report writer. Pure Python + numpy's Generator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

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
