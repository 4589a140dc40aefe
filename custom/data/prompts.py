"""Class prompts for zero-shot classification and prompt-query retrieval: a small YAML format.

Format (``bundles/reclf_cls/configs/prompts/*.yaml`` are worked examples)::

    fields:                        # optional: slot values shared by every class's templates
      side: [left, right]
    classes:
      effusion:                    # a class name = a label name of the datalist (label_names /
                                   #   the keys of dict labels); matched exactly, else ignoring case
        phrases: [pleural effusion, fluid at the lung base]    # literal phrases
        templates:                 # phrases with {slot}s, expanded over the cartesian product of
          - "{severity} {side} pleural effusion"               #   the values of the slots they use
        severity: [small, moderate, large]                     # a class-level slot (overrides `fields`)
        negative:                  # binary / multi-label tasks: "absent" prompts, same form
          phrases: [no pleural effusion, the costophrenic angles are sharp]
      cardiomegaly: [cardiomegaly, the heart is enlarged]      # shorthand for `phrases`

Expansion is deterministic: literal ``phrases`` first, then each template in order over
``itertools.product`` of its slots in order of first appearance (the last slot varies fastest);
whitespace is collapsed (so an empty slot value ``""`` makes a word optional); duplicates are
dropped keeping the first. Slot values are strings (numbers are converted). Any other key of a
class is a slot, so a misspelt key (``templtes:``) is an unused slot and an error, as is a
template slot without values. Every error names the prompt file and the class.
"""

from __future__ import annotations

import itertools
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

RESERVED = ("phrases", "templates", "negative")
MAX_PHRASES = 5000  # per class and polarity: beyond this a cartesian product is almost surely a mistake
_SPACES = re.compile(r"\s+")


class PromptError(ValueError):
    """A prompt file is missing or malformed (the message names the file and the class)."""


@dataclass
class ClassPrompts:
    """The expanded phrases of one class: ``positive`` (present) and ``negative`` (absent; may be empty)."""

    name: str
    positive: list[str]
    negative: list[str] = field(default_factory=list)


def _template_slots(template: str, where: str) -> list[str]:
    """Slot names of ``template`` in order of first appearance (``{a} {b} {a}`` -> [a, b])."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise PromptError(f"{where}: template {template!r} is malformed: {err}") from err
    slots: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise PromptError(f"{where}: template {template!r}: slots are plain names like {{side}}, got {{{name}}}")
        if name not in slots:
            slots.append(name)
    return slots


def _strings(value: Any, what: str, where: str, allow_empty_items: bool = False) -> list[str]:
    """A list of strings from a YAML list (or one scalar); numbers are converted, anything else is an error."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise PromptError(f"{where}: {what} must be a list of strings, got {type(value).__name__}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            # YAML 1.1 reads bare yes/no/on/off as booleans: ask for quotes
            raise PromptError(f"{where}: {what} must hold strings, got {item!r} (quote it in YAML)")
        text = str(item)
        if not text.strip() and not allow_empty_items:
            raise PromptError(f"{where}: {what} holds an empty string")
        out.append(text)
    return out


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def expand_entry(entry: Any, shared_fields: Mapping[str, list[str]], where: str) -> list[str]:
    """Phrases of one class entry (a list of phrases, or a mapping with phrases/templates/slots).

    Args:
        entry: the YAML value of a class (or of its ``negative``).
        shared_fields: top-level ``fields`` (slot -> values), overridden by the entry's own slots.
        where: "file 'x.yaml', class 'y'" for error messages.

    Returns:
        The expanded phrases, in the documented order, whitespace-collapsed and de-duplicated.
    """
    if isinstance(entry, (list, str)):
        entry = {"phrases": entry}
    if not isinstance(entry, Mapping):
        raise PromptError(f"{where}: expected a list of phrases or a mapping with phrases/templates, "
                          f"got {type(entry).__name__}")
    phrases = _strings(entry.get("phrases", []), "'phrases'", where)
    templates = _strings(entry.get("templates", []), "'templates'", where)
    own = {str(k): _strings(v, f"slot '{k}'", where, allow_empty_items=True)
           for k, v in entry.items() if k not in RESERVED}
    slots = {**shared_fields, **own}
    used: set[str] = set()
    out = [_clean(p) for p in phrases]
    for template in templates:
        names = _template_slots(template, where)
        missing = [n for n in names if n not in slots]
        if missing:
            raise PromptError(f"{where}: template {template!r} uses slot '{missing[0]}' which has no values "
                              f"(add `{missing[0]}: [...]` to the class or to the top-level `fields`)")
        empty = [n for n in names if not slots[n]]
        if empty:
            raise PromptError(f"{where}: slot '{empty[0]}' of template {template!r} has an empty value list")
        used.update(names)
        size = 1
        for n in names:
            size *= len(slots[n])
        if size > MAX_PHRASES:
            raise PromptError(f"{where}: template {template!r} expands to {size} phrases (> {MAX_PHRASES})")
        for values in itertools.product(*(slots[n] for n in names)):
            out.append(_clean(template.format(**dict(zip(names, values)))))
    unused = sorted(set(own) - used)
    if unused:
        listed = ", ".join(f"'{k}'" for k in unused)
        raise PromptError(f"{where}: key(s) {listed} not used by any template (a misspelt 'phrases'/'templates'/"
                          f"'negative'? allowed keys: {', '.join(RESERVED)} and the slots of the templates)")
    out = list(dict.fromkeys(p for p in out if p))
    if len(out) > MAX_PHRASES:
        raise PromptError(f"{where}: {len(out)} phrases (> {MAX_PHRASES})")
    return out


def parse_prompts(content: Any, source: str = "<prompts>") -> dict[str, ClassPrompts]:
    """Expand the parsed YAML ``content`` of a prompt file into {class name: ClassPrompts}.

    Raises :class:`PromptError` naming ``source`` (and the class) for any malformed part.
    """
    if not isinstance(content, Mapping) or "classes" not in content:
        raise PromptError(f"prompt file {source!r}: expected a mapping with a top-level 'classes:' "
                          "(class name -> phrases or templates); see custom/data/prompts.py")
    unknown = sorted(set(content) - {"classes", "fields", "description"})
    if unknown:
        raise PromptError(f"prompt file {source!r}: unknown top-level key '{unknown[0]}' "
                          "(allowed: classes, fields, description)")
    fields_raw = content.get("fields") or {}
    if not isinstance(fields_raw, Mapping):
        raise PromptError(f"prompt file {source!r}: 'fields' must map slot names to lists of values")
    shared = {str(k): _strings(v, f"field '{k}'", f"prompt file {source!r}", allow_empty_items=True)
              for k, v in fields_raw.items()}
    classes = content["classes"]
    if not isinstance(classes, Mapping) or not classes:
        raise PromptError(f"prompt file {source!r}: 'classes' must be a non-empty mapping of class name -> phrases")
    out: dict[str, ClassPrompts] = {}
    for name, entry in classes.items():
        where = f"prompt file {source!r}, class {str(name)!r}"
        if entry is None:
            raise PromptError(f"{where}: no phrases")
        negative_entry = entry.get("negative") if isinstance(entry, Mapping) else None
        if isinstance(negative_entry, Mapping) and "negative" in negative_entry:
            raise PromptError(f"{where}: 'negative' cannot itself have a 'negative'")
        positive = expand_entry(entry, shared, where)
        if not positive:
            raise PromptError(f"{where}: no phrases (give 'phrases' or 'templates')")
        negative = expand_entry(negative_entry, shared, where + " (negative)") if negative_entry is not None else []
        if isinstance(entry, Mapping) and "negative" in entry and not negative:
            raise PromptError(f"{where}: 'negative' has no phrases")
        out[str(name)] = ClassPrompts(str(name), positive, negative)
    return out


def load_prompts(path: Any) -> dict[str, ClassPrompts]:
    """Read and expand a prompt file (see the module docstring for the format)."""
    path = str(path)
    if not os.path.isfile(path):
        raise PromptError(f"prompt file {path!r} not found (pass --prompts FILE; examples in "
                          "bundles/reclf_cls/configs/prompts/)")
    from .textfiles import read_text

    try:
        content = yaml.safe_load(read_text(path, "the prompt file"))
    except yaml.YAMLError as err:
        raise PromptError(f"prompt file {path!r} is not valid YAML: {err}") from err
    except ValueError as err:
        raise PromptError(str(err)) from None
    return parse_prompts(content, path)


def match_classes(prompts: Mapping[str, ClassPrompts], label_names: Sequence[str], source: str,
                  require_all: bool) -> list[tuple[str, ClassPrompts]]:
    """Pair the dataset's label names with prompt classes (exact name, else case-insensitive).

    Args:
        prompts: from :func:`load_prompts`. label_names: the dataset's classes, in label order.
        source: the prompt file (for messages). require_all: every label needs prompts
            (multi-class argmax); otherwise labels without prompts are left out by the caller.

    Returns:
        (label name, prompts) in label order for the labels that have prompts.

    Raises:
        PromptError: a prompt class that is not a label (likely a typo), or a label without
        prompts when ``require_all``.
    """
    by_lower: dict[str, str] = {}
    for name in prompts:
        by_lower.setdefault(name.lower(), name)
    pairs: list[tuple[str, ClassPrompts]] = []
    claimed: set[str] = set()
    for label in label_names:
        key = label if label in prompts else by_lower.get(str(label).lower())
        if key is None or key in claimed:
            if require_all:
                raise PromptError(f"prompt file {source!r} has no class {label!r}; the dataset's classes are "
                                  f"{list(label_names)} and every one needs prompts for a multi-class argmax")
            continue
        claimed.add(key)
        pairs.append((str(label), prompts[key]))
    stray = [name for name in prompts if name not in claimed]
    if stray:
        raise PromptError(f"prompt file {source!r}, class {stray[0]!r} is not a class of the dataset "
                          f"{list(label_names)}")
    if not pairs:
        raise PromptError(f"prompt file {source!r} shares no class with the dataset {list(label_names)}")
    return pairs
