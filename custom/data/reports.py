"""Radiology report text as found in the public datasets: de-identification placeholders,
whitespace, and (below) section extraction for MIMIC-style free text and IU X-ray XML."""

from __future__ import annotations

import re

# de-identification placeholders: IU X-ray writes "XXXX", MIMIC-CXR writes "___". A run of four
# or more X is a placeholder even when glued to a word ("4XXXX", "XXXXPM" in IU reports 488, 498).
_X = r"(?:\bX{2,}\b|X{4,})"
_DEID = re.compile(rf"(?:{_X}|_{{2,}})(?:[\s,./-]*(?:{_X}|_{{2,}}))*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_REPEATED_PUNCT = re.compile(r"([,.;:])(?:\s*[,;:])+")
_DANGLING_BEFORE_STOP = re.compile(r"[,;:]+\s*\.")
_SPACES = re.compile(r"[ \t\r\f\v]+")
# a doubled full stop ("findings. ." once a placeholder is gone, or typed "abnormality..");
# an ellipsis of three or more is left alone
_DOUBLE_STOP = re.compile(r"(?<!\.)\.[ \t]*\.(?![ \t]*\.)")


def clean_report(text: object) -> str:
    """Remove de-identification placeholders, collapse whitespace, tidy punctuation left behind.

    The placeholders carry no information and, if kept, become one of the most frequent "words"
    (IU X-ray has ~1 per report), which the local matching would then try to ground. Returns
    ``""`` for a report with no words left; callers count such reports and drop them.
    """
    if text is None:
        return ""
    value = str(text).replace("\x00", " ")
    value = _DEID.sub(" ", value)
    value = _SPACES.sub(" ", value)
    value = "\n".join(line.strip() for line in value.splitlines())
    value = re.sub(r"\n{2,}", "\n", value).strip()
    value = _SPACE_BEFORE_PUNCT.sub(r"\1", value)
    value = _DANGLING_BEFORE_STOP.sub(".", value)
    value = _REPEATED_PUNCT.sub(r"\1", value)
    value = _DOUBLE_STOP.sub(".", value)
    value = re.sub(r"^[\s,.;:]+", "", value)
    return value if any(ch.isalnum() for ch in value) else ""


class ReportParseError(ValueError):
    """A report file cannot be read as the expected format; the message names the file."""


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR free text
# ---------------------------------------------------------------------------------------------

# A heading is upper-case words at the start of a line followed by a colon ("FINDINGS:",
# "RECOMMENDATION(S):", "FINDINGS AND IMPRESSION:", "WET READ:"); text may follow on the same
# line. ASCII only and at most ~60 characters, so an upper-case sentence is not a heading.
_HEADING = re.compile(r"[ \t]*([A-Z][A-Z ()/&,'-]{0,58}[A-Z)])[ \t]*:(.*)")
# headings that stand alone on their line without a colon
_BARE_HEADINGS = {"FINAL REPORT", "ADDENDUM", "PRELIMINARY REPORT"}
# a numbered list item starts a new line when wrapped lines are joined ("1. No effusion.")
_LIST_ITEM = re.compile(r"\d{1,2}[.)]\s")
_KEY_SPACES = re.compile(r"\s+")

# section names (lower-cased) that hold the findings, the impression, or both. MIMIC-CXR's
# radiologists use several spellings; "CONCLUSION" plays the role of the impression.
FINDINGS_KEYS = ("findings", "finding")
IMPRESSION_KEYS = ("impression", "impressions", "conclusion", "conclusions")
BOTH_KEYS = ("findings and impression", "findings/impression", "impression and findings", "findings / impression")


def _unwrap(lines: list[str]) -> str:
    """Join hard-wrapped lines into paragraphs: a blank line or a numbered item starts a new line."""
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or _LIST_ITEM.match(line):
            if current:
                paragraphs.append(" ".join(current))
            current = [line] if line else []
        else:
            current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def report_sections(text: object) -> dict[str, str]:
    """Split a MIMIC-CXR-style free-text report into its sections.

    A section starts at an upper-case heading followed by a colon at the start of a line
    (``FINDINGS:``, ``IMPRESSION:``, ``FINDINGS AND IMPRESSION:``, ``RECOMMENDATION(S):``, ...,
    or a bare ``FINAL REPORT`` / ``ADDENDUM`` line) and runs to the next heading; text on the
    heading's own line belongs to it (``FINDINGS: There is ...``). Wrapped lines are joined,
    paragraphs are kept one per line. Keys are the headings lower-cased with single spaces
    (``"findings and impression"``); text before the first heading is ``"preamble"``; a heading
    that occurs twice (an addendum repeating ``IMPRESSION:``) has its texts joined by a newline.
    Placeholders are not removed here (see :func:`clean_report`). Never raises on a string.
    """
    if text is None:
        return {}
    collected: dict[str, list[list[str]]] = {}
    key = "preamble"
    lines: list[str] = []

    def close() -> None:
        collected.setdefault(key, []).append(lines)

    for line in str(text).replace("\x00", " ").splitlines():
        stripped = line.strip()
        match = _HEADING.fullmatch(line)
        if match:
            close()
            key, lines = _KEY_SPACES.sub(" ", match.group(1)).strip().lower(), [match.group(2)]
        elif stripped in _BARE_HEADINGS:
            close()
            key, lines = stripped.lower(), []
        else:
            lines.append(line)
    close()
    sections: dict[str, str] = {}
    for name, parts in collected.items():
        body = "\n".join(p for p in (_unwrap(part) for part in parts) if p)
        if body or name != "preamble":
            sections[name] = body
    return sections


def findings_impression(text: object) -> str:
    """The FINDINGS then IMPRESSION text of a MIMIC-style report, cleaned with :func:`clean_report`.

    ``FINDINGS AND IMPRESSION:`` (and ``FINDINGS/IMPRESSION:``) counts as both; ``CONCLUSION:``
    counts as the impression. Returns ``""`` when the report has neither section (or they hold
    only placeholders): the caller counts such reports, it does not fall back to the other
    sections (indication and history describe why the exam was ordered, not the image).
    """
    sections = report_sections(text)
    parts = [sections[k] for group in (FINDINGS_KEYS, BOTH_KEYS, IMPRESSION_KEYS) for k in group if sections.get(k)]
    return clean_report("\n".join(parts))


# ---------------------------------------------------------------------------------------------
# IU X-ray / OpenI XML
# ---------------------------------------------------------------------------------------------

IU_SECTIONS = ("comparison", "indication", "findings", "impression")


def _reject_declarations(data: bytes | str, source: str) -> None:
    """Refuse DOCTYPE and ENTITY declarations (ElementTree would expand internal entities); a
    first pass with expat also checks well-formedness in whatever encoding the file declares."""
    from xml.parsers import expat

    def refuse(*_: object) -> None:
        raise ReportParseError(f"{source}: DOCTYPE/ENTITY declarations are not accepted in a report XML")

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except ReportParseError:
        raise
    except (expat.ExpatError, ValueError, LookupError, TypeError) as err:
        raise ReportParseError(f"{source}: malformed report XML ({err})") from None


def parse_iu_xml(data: bytes | str, source: str) -> dict[str, object]:
    """One IU X-ray / OpenI report (``ecgen-radiology/*.xml``) as a dict.

    Returns:
        ``{"report_id": "CXR1", "findings": str, "impression": str, "comparison": str,
        "indication": str, "images": ["CXR1_1_IM-0001-3001", ...], "mesh": ["normal", ...]}``.
        Section texts come from ``<AbstractText Label="FINDINGS">`` etc., whitespace-stripped,
        ``""`` when absent or empty, placeholders (``XXXX``) kept (see :func:`clean_report`).
        ``images`` are the ``<parentImage id=...>`` values in file order (the PNG stems);
        ``mesh`` the ``<MeSH><major>`` terms. ``report_id`` is ``<uId id=...>``, else the file
        name without ``.xml``.

    Raises:
        ReportParseError: malformed XML, a DOCTYPE/ENTITY declaration, or a root element other
            than ``eCitation``; the message names ``source``.
    """
    import xml.etree.ElementTree as ET

    _reject_declarations(data, source)
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, ValueError, LookupError, TypeError) as err:
        raise ReportParseError(f"{source}: malformed report XML ({err})") from None
    if root.tag != "eCitation":
        raise ReportParseError(f"{source}: root element <{root.tag}>, expected <eCitation> (an OpenI report)")
    sections = {name: "" for name in IU_SECTIONS}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in sections:
            text = "".join(node.itertext()).strip()
            sections[label] = f"{sections[label]}\n{text}".strip() if sections[label] else text
    uid = root.find("uId")
    report_id = (uid.get("id") or "").strip() if uid is not None else ""
    if not report_id:
        name = source.replace("\\", "/").rsplit("/", 1)[-1]
        report_id = name[:-4] if name.lower().endswith(".xml") else name
    images = [p.get("id", "").strip() for p in root.iter("parentImage") if p.get("id", "").strip()]
    mesh = [(m.text or "").strip() for node in root.iter("MeSH") for m in node.iter("major") if (m.text or "").strip()]
    return {"report_id": report_id, **sections, "images": images, "mesh": mesh}
