"""``json.loads`` for untrusted text, with a nesting limit.

CPython's JSON decoder recurses once per nested array or object, so a few thousand
``[`` raise :class:`RecursionError` (not :class:`ValueError`), which request code
does not expect and which turned into HTTP 500s. :func:`loads_bounded` measures the
nesting first (strings skipped) and refuses deep documents with a ``ValueError``.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 32
# A JSON string literal (escapes included); brackets inside strings do not nest.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class JsonTooDeep(ValueError):
    """The document nests arrays/objects deeper than allowed."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``data``, ignoring brackets inside strings."""
    if data.count(b"[") + data.count(b"{") == 0:
        return 0
    depth = deepest = 0
    for byte in _STRING.sub(b'""', data):
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def loads_bounded(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)``; raises :class:`JsonTooDeep` (a ``ValueError``) past ``max_depth``.

    Every other failure is the ``ValueError`` (``JSONDecodeError``/``UnicodeDecodeError``)
    ``json.loads`` raises, so callers keep a single ``except ValueError``.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") > max_depth and json_depth(data) > max_depth:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels") from None
