"""Ids from requests, read strictly.

`str.isdigit()` is true for "²" and other Unicode digits that `int()` refuses, and a string of
digits may not fit the databases' integers (SQLite raises OverflowError past 2⁶³ − 1): every id
that comes from a URL, a query string or a form goes through here, and one that cannot be an id
is simply not found.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MAX_ID = 2**63 - 1  # the largest key PostgreSQL's bigint and SQLite's INTEGER hold


def parse_id(value: Any) -> int | None:
    """A positive id that fits the database, or None."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ID)):
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID else None


def parse_ids(values: Iterable[Any]) -> list[int]:
    """The values that are ids, in order; the others dropped."""
    return [number for number in map(parse_id, values) if number is not None]


class IdConverter:
    """`<id:pk>` in URLs: like `<int:pk>`, but a number no row can have does not match (404)."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = parse_id(value)
        if number is None:
            raise ValueError(value)
        return number

    def to_url(self, value: int) -> str:
        return str(value)
