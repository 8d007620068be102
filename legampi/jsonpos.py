"""Where each item of a JSON list of file objects starts, for messages that name a line.

The json module gives no positions, so the list is decoded item by item with ``raw_decode``; a
top-level list is decoded only once this way. Errors are json.JSONDecodeError, as json.loads raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_DEC = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]  # always matches (may be empty)


def _value_at(text: str, i: int, key: str) -> int:
    """Offset of the value of KEY in the (valid) JSON object at I; the last one wins, as in json.loads."""
    found, i = -1, _skip(text, _skip(text, i) + 1)
    while text[i] != "}":
        k, i = _DEC.raw_decode(text, i)
        i = _skip(text, _skip(text, i) + 1)  # the ':'
        if k == key:
            found = i
        _, i = _DEC.raw_decode(text, i)
        i = _skip(text, i)
        if text[i] == ",":
            i = _skip(text, i + 1)
    return found


def _items(text: str, i: int, too_many: Callable[[int, str], None], source: str) -> tuple[list[tuple[Any, int]], int]:
    """(item, line) for each item of the JSON list at offset I, and the offset after it: decoded item by
    item because json has no positions of its own. Raises JSONDecodeError as json.loads would."""
    out: list[tuple[Any, int]] = []
    line, counted = 1, 0
    i = _skip(text, i + 1)
    if text[i : i + 1] == "]":
        return out, i + 1
    while True:
        line += text.count("\n", counted, i)
        counted = i
        obj, i = _DEC.raw_decode(text, i)
        out.append((obj, line))
        too_many(len(out), f"{source}:{line}")
        i = _skip(text, i)
        if text[i : i + 1] == ",":
            i = _skip(text, i + 1)
        elif text[i : i + 1] == "]":
            return out, i + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)


def list_items(text: str, too_many: Callable[[int, str], None], source: str) -> list[tuple[Any, int]] | None:
    """The file objects with their lines (None when there is no list of them). A top-level list is
    decoded once, item by item; a wrapped shape is validated by json.loads, then its list is found and
    decoded the same way."""
    start = _skip(text, 0)
    if text[start : start + 1] == "[":
        items, end = _items(text, start, too_many, source)
        if _skip(text, end) != len(text):
            raise json.JSONDecodeError("Extra data", text, _skip(text, end))
        return items
    data = json.loads(text)
    path: tuple[str, ...] = ()
    if isinstance(data, dict):
        if "files" in data:
            path, data = ("files",), data["files"]
        elif isinstance(data.get("response"), dict) and "result" in data["response"]:
            path, data = ("response", "result"), data["response"]["result"]
    if not isinstance(data, list):
        return None
    del data  # the list is decoded again below, with positions; do not hold both
    i = start
    for key in path:
        i = _value_at(text, i, key)
    return _items(text, i, too_many, source)[0]
