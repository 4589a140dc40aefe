"""Reading the project's text inputs (datalists, CSVs, reports, prompt files) as UTF-8, with an
error that names the file, the offset and the encoding it looks like instead of a traceback."""

from __future__ import annotations

import codecs
import gzip
import io
import json
from typing import Any

BOMS = ((codecs.BOM_UTF32_LE, "UTF-32-LE"), (codecs.BOM_UTF32_BE, "UTF-32-BE"),
        (codecs.BOM_UTF16_LE, "UTF-16-LE"), (codecs.BOM_UTF16_BE, "UTF-16-BE"))


class TextEncodingError(ValueError):
    """A text input is not UTF-8; the message names the file and the encoding found."""


def guess_encoding(data: bytes) -> str:
    """What a non-UTF-8 text most likely is: a UTF-16/32 byte-order mark, UTF-16 without one (NUL
    bytes between ASCII letters), Windows-1252 (decodes and has typical Western bytes) or binary."""
    for bom, name in BOMS:
        if data.startswith(bom):
            return name
    sample = data[:4096]
    if sample and sample.count(b"\x00") > len(sample) // 4:
        return "UTF-16 (no byte-order mark)" if sample[1::2].count(b"\x00") > len(sample) // 4 else "binary data"
    try:
        sample.decode("cp1252")
        return "Windows-1252 / Latin-1"
    except UnicodeDecodeError:
        return "Latin-1 or another 8-bit code page"


def encoding_error(path: str, what: str, data: bytes, err: UnicodeDecodeError) -> TextEncodingError:
    found = guess_encoding(data)
    fix = "iconv -f UTF-16 -t UTF-8" if "UTF-16" in found else "iconv -f WINDOWS-1252 -t UTF-8"
    return TextEncodingError(
        f"{path}: {what} is not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}; it looks like "
        f"{found}). Re-save it as UTF-8, e.g. `{fix} IN > OUT`"
    )


def read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped for ``*.gz``."""
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str, what: str = "the text file") -> str:
    """The whole file as text (UTF-8, an optional BOM dropped); :class:`TextEncodingError` otherwise."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise encoding_error(path, what, data, err) from None


def open_text(path: str, what: str = "the text file") -> io.StringIO:
    """:func:`read_text` as a file object (``newline=""`` semantics for the csv module)."""
    return io.StringIO(read_text(path, what), newline="")


def read_json(path: str, what: str = "the JSON file") -> Any:
    """Parsed JSON, with the file, line and column of a syntax error."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {what} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
