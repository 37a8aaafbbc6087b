"""The Flywheel "finder" query language, evaluated on JSON documents.

The SDK sends ``?filter=label=foo,created>2018-10-31&sort=label:asc,created:desc``; the
sandbox's list endpoints parse both with this module and apply them to the documents they
would return. Matching follows MongoDB, which the real server uses:

* a list-valued field matches when any element matches (``!=`` and ``!=|`` when none does);
* a missing field is None, so ``field=null`` finds missing fields and ``field!=null`` the rest;
* values compare only with values of the same kind (numbers, strings, datetimes); a type
  mismatch never matches, except that ``!=`` and ``!=|`` are the exact negations of ``=``
  and ``=|`` and therefore do match.

Unquoted values are typed automatically: ``null``, numbers, ``YYYY-MM-DD`` dates and ISO-8601
timestamps. Like the real server, ``=``/``!=``/``=|``/``!=|`` also let such a number or
date match a string field holding exactly the typed text, so ``label=123456`` finds the
label ``"123456"``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final, TypeVar

__all__ = [
    "Condition",
    "FilterError",
    "get_path",
    "matches",
    "parse_filter",
    "parse_filters",
    "parse_sort",
    "sort_docs",
]

_D = TypeVar("_D", bound=Mapping[str, Any])


class FilterError(ValueError):
    """A filter or sort expression that cannot be parsed (the sandbox answers HTTP 400)."""


@dataclass(frozen=True)
class Condition:
    """One ``<field><op><value>`` condition.

    ``value`` is the typed value: None, int, float, str, or a UTC-aware datetime; for
    ``=|``/``!=|`` a tuple of those; for ``=~`` a compiled pattern. ``literals`` holds the
    original text of unquoted values that were typed as numbers or dates, so that equality
    can also find string fields spelled that way.
    """

    field: str
    op: str
    value: object
    literals: tuple[str, ...] = ()


# At one position several operators can start ("!=|", "!=" ...); trying them longest first
# gives the longest one.
_OPERATORS: Final = ("!=|", "<=", ">=", "=~", "=|", "!=", "=", "<", ">")
_OPERATOR_CHARS: Final = frozenset("<>=!")
_LIST_OPS: Final = frozenset({"=|", "!=|"})
_ORDER_OPS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

# [0-9] rather than \d: int() and datetime() accept other Unicode digits, the API does not.
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATETIME_RE: Final = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:[T ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})"
    r"(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]+))?)?"
    r"(?P<tz>Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)


# --------------------------------------------------------------------------- parsing


def parse_filter(expr: str) -> list[Condition]:
    """Parse one ``filter`` parameter into its comma-separated conditions."""
    if not expr.strip():
        return []
    conditions: list[Condition] = []
    pos = 0
    while True:
        condition, pos = _parse_condition(expr, pos)
        conditions.append(condition)
        if pos >= len(expr):
            return conditions
        pos += 1  # past the comma that ended the condition


def parse_filters(exprs: Iterable[str]) -> list[Condition]:
    """Parse several ``filter`` parameters; their conditions are all ANDed."""
    return [condition for expr in exprs for condition in parse_filter(expr)]


def _error(text: str, reason: str) -> FilterError:
    return FilterError(f"invalid filter condition {text!r}: {reason}")


def _until_comma(expr: str, start: int, pos: int | None = None) -> str:
    """The condition text from ``start`` to the first unescaped comma at or after ``pos``."""
    i = start if pos is None else pos
    while i < len(expr) and expr[i] != ",":
        i += 2 if expr[i] == "\\" else 1
    return expr[start:i]


def _parse_condition(expr: str, start: int) -> tuple[Condition, int]:
    n = len(expr)
    i = start
    op: str | None = None
    while i < n and expr[i] != ",":
        if expr[i] in _OPERATOR_CHARS:
            op = next((o for o in _OPERATORS if expr.startswith(o, i)), None)
            if op is not None:
                break
        i += 1
    if op is None:
        text = expr[start:i]
        raise _error(text, "no operator" if text.strip() else "empty condition")
    field = expr[start:i].strip()
    if not field:
        raise _error(_until_comma(expr, start), "empty field name")
    value_start = i + len(op)

    if op in _LIST_OPS:
        items, end = _parse_list(expr, value_start, start)
        values = tuple(value for value, _ in items)
        literals = tuple(literal for _, literal in items if literal is not None)
        return Condition(field, op, values, literals), end

    text, quoted, end = _parse_scalar(expr, value_start, start)
    if op == "=~":
        # Quoting asks for the text itself, so its regex metacharacters must not act.
        pattern = _compile(re.escape(text) if quoted else text, expr[start:end])
        return Condition(field, op, pattern), end
    if quoted:
        return Condition(field, op, text), end
    value, literal = _typed(text)
    return Condition(field, op, value, () if literal is None else (literal,)), end


def _compile(pattern: str, condition_text: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise _error(condition_text, f"invalid regular expression: {exc}") from None


def _parse_scalar(expr: str, pos: int, start: int) -> tuple[str, bool, int]:
    """Read a value up to the condition's end: (text, was quoted, index of the end)."""
    n = len(expr)
    if pos < n and expr[pos] == '"':
        text, end = _read_quoted(expr, pos, start)
        if end < n and expr[end] != ",":
            raise _error(_until_comma(expr, start, end), "unexpected text after the closing quote")
        return text, True, end
    out: list[str] = []
    i = pos
    while i < n:
        ch = expr[i]
        if ch == "\\" and i + 1 < n:
            # Only "\," is an escape here: every other backslash pair is kept whole, so
            # regexes such as \d+ and \\ reach re.compile untouched.
            out.append("," if expr[i + 1] == "," else expr[i : i + 2])
            i += 2
            continue
        if ch == ",":
            break
        out.append(ch)
        i += 1
    return "".join(out), False, i


def _read_quoted(expr: str, pos: int, start: int) -> tuple[str, int]:
    """Read ``"..."`` starting at ``pos``: (unescaped text, index after the closing quote)."""
    n = len(expr)
    out: list[str] = []
    i = pos + 1
    while i < n:
        ch = expr[i]
        if ch == "\\" and i + 1 < n:
            nxt = expr[i + 1]
            out.append(nxt if nxt in '"\\,' else expr[i : i + 2])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise _error(expr[start:], "unterminated quote")


def _parse_list(expr: str, pos: int, start: int) -> tuple[list[tuple[object, str | None]], int]:
    """Read the value of ``=|``/``!=|``: ``[a,b,...]``, or a bare single value."""
    n = len(expr)
    if pos >= n or expr[pos] != "[":
        text, quoted, end = _parse_scalar(expr, pos, start)
        return [_element(text, quoted)], end

    items: list[tuple[object, str | None]] = []
    i = _skip_spaces(expr, pos + 1)
    if i < n and expr[i] == "]":
        i += 1
    else:
        while True:
            i = _skip_spaces(expr, i)
            if i < n and expr[i] == '"':
                text, i = _read_quoted(expr, i, start)
                quoted = True
                i = _skip_spaces(expr, i)
            else:
                raw: list[str] = []
                while i < n and expr[i] not in ",]":
                    if expr[i] == "\\" and i + 1 < n:
                        nxt = expr[i + 1]
                        raw.append(nxt if nxt in ",]" else expr[i : i + 2])
                        i += 2
                    else:
                        raw.append(expr[i])
                        i += 1
                # People write "[a, b]"; the spaces are layout, not part of the values.
                text = "".join(raw).strip()
                quoted = False
            if i >= n:
                raise _error(expr[start:], "unterminated bracket")
            items.append(_element(text, quoted))
            if expr[i] == "]":
                i += 1
                break
            if expr[i] != ",":
                raise _error(expr[start:], "unexpected text after a quoted list element")
            i += 1
    if i < n and expr[i] != ",":
        raise _error(_until_comma(expr, start, i), "unexpected text after the closing bracket")
    return items, i


def _skip_spaces(expr: str, i: int) -> int:
    while i < len(expr) and expr[i] == " ":
        i += 1
    return i


def _element(text: str, quoted: bool) -> tuple[object, str | None]:
    return (text, None) if quoted else _typed(text)


def _typed(text: str) -> tuple[object, str | None]:
    """Type an unquoted value: (value, its text if typed as a number or date, else None)."""
    if text == "null":
        return None, None
    if _INT_RE.fullmatch(text):
        return int(text), text
    if _FLOAT_RE.fullmatch(text):
        return float(text), text
    moment = _parse_datetime(text)
    if moment is not None:
        return moment, text
    return text, None


def _parse_datetime(text: str) -> datetime | None:
    """Parse an ISO-8601 date or timestamp to a UTC-aware datetime, or None.

    Hand-rolled because datetime.fromisoformat on Python 3.10 rejects "Z" and fractions
    that are not exactly 3 or 6 digits, both of which appear in real Flywheel documents.
    """
    m = _DATETIME_RE.fullmatch(text)
    if m is None:
        return None
    offset = timedelta()
    tz = m["tz"]
    if tz and tz != "Z":
        digits = tz[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        if tz[0] == "-":
            offset = -offset
    try:
        moment = datetime(
            int(m["y"]),
            int(m["mo"]),
            int(m["d"]),
            int(m["h"] or 0),
            int(m["mi"] or 0),
            int(m["s"] or 0),
            int((m["f"] or "")[:6].ljust(6, "0")),
            tzinfo=timezone(offset),
        )
    except ValueError:  # 2024-02-30, 25:00, an offset of a day or more ...
        return None
    return moment.astimezone(timezone.utc)


# --------------------------------------------------------------------------- matching


def get_path(doc: Mapping[str, Any], dotted: str) -> Any:
    """Follow a dotted path; None when it is missing.

    Through a list of dicts the values are collected, flattening list values one level as
    MongoDB does, so ``files.name`` gives the list of file names. A walk through a list that
    finds no value at all yields None, i.e. the path is missing.
    """
    current: Any = doc
    for part in dotted.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list):
            collected: list[Any] = []
            for item in current:
                if isinstance(item, Mapping) and part in item:
                    value = item[part]
                    if isinstance(value, list):
                        collected.extend(value)
                    else:
                        collected.append(value)
            current = collected or None
        else:
            return None
        if current is None:
            return None
    return current


def matches(doc: Mapping[str, Any], conds: Sequence[Condition]) -> bool:
    """Whether ``doc`` satisfies every condition."""
    return all(_matches_one(doc, cond) for cond in conds)


def _matches_one(doc: Mapping[str, Any], cond: Condition) -> bool:
    found = get_path(doc, cond.field)
    elements: list[Any] = found if isinstance(found, list) else [found]
    op = cond.op
    if op in ("=", "!="):
        hit = any(
            _equals(element, cond.value) or _is_literal(element, cond.literals)
            for element in elements
        )
        return hit if op == "=" else not hit
    if op in _LIST_OPS:
        value = cond.value
        targets = value if isinstance(value, (list, tuple)) else (value,)
        hit = any(
            _is_literal(element, cond.literals) or any(_equals(element, t) for t in targets)
            for element in elements
        )
        return hit if op == "=|" else not hit
    if op in _ORDER_OPS:
        return any(_compare(element, op, cond.value) for element in elements)
    if op == "=~":
        pattern = cond.value
        if not isinstance(pattern, re.Pattern):  # a Condition built by hand
            pattern = _compile(str(pattern), f"{cond.field}{op}{pattern}")
        return any(isinstance(e, str) and pattern.search(e) is not None for e in elements)
    raise FilterError(f"unknown filter operator {op!r} on field {cond.field!r}")


def _is_number(value: object) -> bool:
    # bool is an int subclass, but True is not the number 1 to MongoDB.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_datetime(value: object) -> datetime | None:
    """A UTC-aware datetime for datetimes, dates and ISO-8601 strings; None otherwise."""
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        return _parse_datetime(value)
    return None


def _is_literal(element: object, literals: tuple[str, ...]) -> bool:
    return isinstance(element, str) and element in literals


def _equals(element: object, target: object) -> bool:
    if target is None:
        return element is None
    if isinstance(target, date):
        moment = _as_datetime(element)
        return moment is not None and moment == _as_datetime(target)
    if _is_number(target):
        return _is_number(element) and element == target
    return type(element) is type(target) and element == target


def _compare(element: object, op: str, target: object) -> bool:
    left: Any
    right: Any
    if target is None:
        # MongoDB: $lte/$gte null find null and missing, $lt/$gt null find nothing.
        return op in ("<=", ">=") and element is None
    if isinstance(target, date):
        left, right = _as_datetime(element), _as_datetime(target)
        if left is None:
            return False
    elif _is_number(target):
        if not _is_number(element):
            return False
        left, right = element, target
    elif isinstance(target, str):
        if not isinstance(element, str):
            return False
        left, right = element, target
    else:
        return False
    return bool(_ORDER_OPS[op](left, right))


# --------------------------------------------------------------------------- sorting


def parse_sort(expr: str) -> list[tuple[str, bool]]:
    """Parse ``label:asc,created:desc`` into ``[(field, descending), ...]``."""
    if not expr.strip():
        return []
    spec: list[tuple[str, bool]] = []
    for item in expr.split(","):
        field, colon, order = item.partition(":")
        field = field.strip()
        order = order.strip().lower()
        if not field:
            raise FilterError(f"invalid sort key {item!r}: empty field name")
        if not colon:
            spec.append((field, False))
        elif order in ("asc", "desc"):
            spec.append((field, order == "desc"))
        else:
            raise FilterError(f"invalid sort key {item!r}: order must be asc or desc")
    return spec


def sort_docs(docs: Iterable[_D], spec: Sequence[tuple[str, bool]]) -> list[_D]:
    """Stable multi-key sort of ``docs`` by ``spec`` (as from :func:`parse_sort`)."""
    result = list(docs)
    # Sorting by the least significant key first and the most significant last gives the
    # multi-key order, since each sort is stable (reverse=True keeps stability too).
    for field, descending in reversed(spec):
        result.sort(key=_sort_key_for(field, descending), reverse=descending)
    return result


def _sort_key_for(field: str, descending: bool) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    def key(doc: Mapping[str, Any]) -> tuple[Any, ...]:
        value = get_path(doc, field)
        if isinstance(value, list):
            # MongoDB sorts an array by its smallest element ascending, its largest descending.
            keys = [_rank(element) for element in value]
            if not keys:
                return _rank(None)
            return max(keys) if descending else min(keys)
        return _rank(value)

    return key


def _rank(value: object) -> tuple[Any, ...]:
    """A key that orders any two values without raising: the type rank comes first."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (3, value)
    if isinstance(value, (int, float)):
        # NaN compares false with everything, which would scramble a sort; MongoDB puts it
        # before all other numbers.
        return (1, 0, 0.0) if math.isnan(value) else (1, 1, value)
    if isinstance(value, str):
        return (2, value)
    moment = _as_datetime(value)
    if moment is not None:
        return (4, moment)
    return (5, type(value).__name__, repr(value))
