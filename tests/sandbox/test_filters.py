"""Tests for the sandbox's finder query language (fwfs.sandbox.filters)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from fwfs.sandbox.filters import (
    Condition,
    FilterError,
    get_path,
    matches,
    parse_filter,
    parse_filters,
    parse_sort,
    sort_docs,
)

UTC = timezone.utc


def find(docs: list[dict[str, Any]], expr: str) -> list[Any]:
    """The ``_id`` of every doc the filter selects, in input order."""
    conds = parse_filter(expr)
    return [doc["_id"] for doc in docs if matches(doc, conds)]


def ok(doc: Mapping[str, Any], expr: str) -> bool:
    return matches(doc, parse_filter(expr))


# --------------------------------------------------------------------------- parsing


def test_empty_filter_is_no_condition_and_matches_everything() -> None:
    assert parse_filter("") == []
    assert parse_filter("   ") == []
    assert matches({"label": "x"}, []) is True


@pytest.mark.parametrize(
    ("expr", "op"),
    [
        ("a<1", "<"),
        ("a<=1", "<="),
        ("a=1", "="),
        ("a!=1", "!="),
        ("a>=1", ">="),
        ("a>1", ">"),
        ("a=~1", "=~"),
        ("a=|1", "=|"),
        ("a!=|1", "!=|"),
    ],
)
def test_each_operator_is_recognised(expr: str, op: str) -> None:
    [cond] = parse_filter(expr)
    assert cond.field == "a"
    assert cond.op == op


def test_operator_is_the_first_one_in_the_condition() -> None:
    # The value may contain operator characters: only the first operator counts.
    [cond] = parse_filter("label=a>=b")
    assert (cond.field, cond.op, cond.value) == ("label", "=", "a>=b")
    [cond] = parse_filter("info.x<=<5")
    assert (cond.field, cond.op, cond.value) == ("info.x", "<=", "<5")
    # A lone "!" is not an operator, so it belongs to the field name.
    [cond] = parse_filter("a!b=c")
    assert (cond.field, cond.op, cond.value) == ("a!b", "=", "c")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("-3", -3),
        ("+7", 7),
        ("15.7", 15.7),
        ("-0.5", -0.5),
        ("1e3", 1000.0),
        ("null", None),
        ('"null"', "null"),
        ('"42"', "42"),
        ("My Project", "My Project"),
        ("abc123", "abc123"),
        ("2018-10-31", datetime(2018, 10, 31, tzinfo=UTC)),
        ("2018-10-31T12:30:05", datetime(2018, 10, 31, 12, 30, 5, tzinfo=UTC)),
        ("2018-10-31T12:30:05Z", datetime(2018, 10, 31, 12, 30, 5, tzinfo=UTC)),
        ("2018-10-31T12:30:05.25", datetime(2018, 10, 31, 12, 30, 5, 250000, tzinfo=UTC)),
        ("2018-10-31T12:30:05+02:00", datetime(2018, 10, 31, 10, 30, 5, tzinfo=UTC)),
        ("2018-10-31T23:30:00-0130", datetime(2018, 11, 1, 1, 0, 0, tzinfo=UTC)),
        ('"2018-10-31"', "2018-10-31"),
        # Not a real date: kept as text rather than rejected.
        ("2018-13-45", "2018-13-45"),
    ],
)
def test_value_typing(text: str, value: object) -> None:
    [cond] = parse_filter(f"x={text}")
    assert cond.value == value
    assert type(cond.value) is type(value)


def test_typed_values_remember_their_text_and_quoted_values_do_not() -> None:
    assert parse_filter("label=007")[0].literals == ("007",)
    assert parse_filter("label=2018-10-31")[0].literals == ("2018-10-31",)
    assert parse_filter('label="007"')[0].literals == ()
    assert parse_filter("label=abc")[0].literals == ()
    assert parse_filter("label=null")[0].literals == ()


def test_timestamps_are_utc_aware() -> None:
    [cond] = parse_filter("created>2018-10-31T12:00:00")
    assert isinstance(cond.value, datetime)
    assert cond.value.utcoffset() == timedelta(0)


def test_several_conditions_separated_by_commas() -> None:
    conds = parse_filter("label=My Project,info.age>=18,state!=failed")
    assert conds == [
        Condition("label", "=", "My Project"),
        Condition("info.age", ">=", 18, ("18",)),
        Condition("state", "!=", "failed"),
    ]


def test_escaped_comma_is_part_of_the_value() -> None:
    assert parse_filter(r"label=a\,b") == [Condition("label", "=", "a,b")]
    assert parse_filter(r"label=a\,b,state=x") == [
        Condition("label", "=", "a,b"),
        Condition("state", "=", "x"),
    ]


def test_quoted_value_may_hold_commas_and_escaped_quotes() -> None:
    assert parse_filter(r'label="a,b",x=1') == [
        Condition("label", "=", "a,b"),
        Condition("x", "=", 1, ("1",)),
    ]
    assert parse_filter(r'label="say \"hi\""') == [Condition("label", "=", 'say "hi"')]


def test_list_value_commas_do_not_separate_conditions() -> None:
    conds = parse_filter("gear_info.name=|[dcm2niix,file-metadata-importer],state=complete")
    assert conds == [
        Condition("gear_info.name", "=|", ("dcm2niix", "file-metadata-importer")),
        Condition("state", "=", "complete"),
    ]


def test_list_elements_are_typed_one_by_one() -> None:
    [cond] = parse_filter('x=|[1, 2.5, null, "3", abc, 2020-01-02, "a,b"]')
    assert cond.value == (1, 2.5, None, "3", "abc", datetime(2020, 1, 2, tzinfo=UTC), "a,b")
    assert cond.literals == ("1", "2.5", "2020-01-02")


def test_list_without_brackets_is_a_single_element() -> None:
    assert parse_filter("x=|abc") == [Condition("x", "=|", ("abc",))]
    assert parse_filter("x!=|5") == [Condition("x", "!=|", (5,), ("5",))]


def test_empty_list() -> None:
    [cond] = parse_filter("x=|[]")
    assert cond.value == ()
    assert ok({"x": 1}, "x=|[]") is False
    assert ok({"x": 1}, "x!=|[]") is True


def test_field_whitespace_is_ignored_but_value_whitespace_is_kept() -> None:
    assert parse_filter("label=a, state=b ") == [
        Condition("label", "=", "a"),
        Condition("state", "=", "b "),
    ]


def test_parse_filters_ands_several_parameters() -> None:
    conds = parse_filters(["label=a", "", "x>1,y<2"])
    assert [(c.field, c.op) for c in conds] == [("label", "="), ("x", ">"), ("y", "<")]
    docs: list[dict[str, Any]] = [
        {"_id": 1, "label": "a", "x": 2, "y": 1},
        {"_id": 2, "label": "a", "x": 0, "y": 1},
        {"_id": 3, "label": "b", "x": 2, "y": 1},
    ]
    assert [d["_id"] for d in docs if matches(d, conds)] == [1]


def test_regex_condition_is_compiled_and_keeps_backslashes() -> None:
    [cond] = parse_filter(r"label=~\d+")
    assert isinstance(cond.value, re.Pattern)
    assert cond.value.pattern == r"\d+"
    # "\," is still the comma escape inside a regex.
    [cond] = parse_filter(r"label=~a\,b")
    assert isinstance(cond.value, re.Pattern)
    assert cond.value.pattern == "a,b"


@pytest.mark.parametrize(
    ("expr", "bad"),
    [
        ("label", "label"),
        ("label=a,nooperator", "nooperator"),
        ("=abc", "=abc"),
        ("  =abc", "=abc"),
        ("label=a,,state=b", "''"),
        ("label=a,", "''"),
        ("label=~[unclosed", "label=~[unclosed"),
        ("label=~a(b", "label=~a(b"),
        ('label="abc', 'label="abc'),
        ('label="abc"def', 'label="abc"def'),
        ("x=|[a,b", "x=|[a,b"),
        ("x=|[a,b]c", "x=|[a,b]c"),
        ('x=|["a" b]', 'x=|["a" b]'),
        ('x=|["a', 'x=|["a'),
    ],
)
def test_unparsable_conditions_raise_filter_error_naming_them(expr: str, bad: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(expr)
    assert bad in str(info.value)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- get_path


def test_get_path_walks_dicts_and_collects_through_lists() -> None:
    doc = {
        "_id": "c1",
        "label": "x",
        "parents": {"project": "p1"},
        "info": {"a": {"b": 3}},
        "files": [
            {"name": "a.dcm", "tags": ["t1", "t2"]},
            {"name": "b.nii", "tags": ["t3"]},
            {"size": 3},
        ],
    }
    assert get_path(doc, "_id") == "c1"
    assert get_path(doc, "parents.project") == "p1"
    assert get_path(doc, "info.a.b") == 3
    assert get_path(doc, "files.name") == ["a.dcm", "b.nii"]
    assert get_path(doc, "files.tags") == ["t1", "t2", "t3"]
    assert get_path(doc, "missing") is None
    assert get_path(doc, "info.missing.deeper") is None
    assert get_path(doc, "label.deeper") is None
    assert get_path(doc, "files.missing") is None
    assert get_path({"files": []}, "files") == []
    assert get_path({"files": []}, "files.name") is None


# --------------------------------------------------------------------------- guide examples

GUIDE_DOCS: list[dict[str, Any]] = [
    {"_id": 1, "label": "My Project"},
    {"_id": 2, "label": "123456"},
    {"_id": 3, "label": "aB"},
    {"_id": 4, "label": "---"},
    {"_id": 5, "label": "Scan 42"},
]


def test_guide_regex_optional_letters_matches_everything() -> None:
    # Every part of the pattern is optional, so re.search finds an empty match anywhere.
    assert find(GUIDE_DOCS, "label=~.?[A-Z]?[a-z]?") == [1, 2, 3, 4, 5]


def test_guide_regex_digits() -> None:
    assert find(GUIDE_DOCS, r"label=~\d+") == [2, 5]


def test_guide_quoted_number_and_unquoted_number_find_the_string_label() -> None:
    assert find(GUIDE_DOCS, 'label="123456"') == [2]
    assert find(GUIDE_DOCS, "label=123456") == [2]


def test_guide_label_with_space() -> None:
    assert find(GUIDE_DOCS, "label=My Project") == [1]


def test_guide_gear_name_in_list() -> None:
    jobs: list[dict[str, Any]] = [
        {"_id": "j1", "gear_info": {"name": "dcm2niix"}, "state": "failed"},
        {"_id": "j2", "gear_info": {"name": "file-metadata-importer"}, "state": "complete"},
        {"_id": "j3", "gear_info": {"name": "other"}, "state": "failed"},
        {"_id": "j4", "state": "failed"},
    ]
    assert find(jobs, "gear_info.name=|[dcm2niix,file-metadata-importer]") == ["j1", "j2"]
    assert find(jobs, "state=failed") == ["j1", "j3", "j4"]
    assert find(jobs, "gear_info.name=|[dcm2niix,file-metadata-importer],state=failed") == ["j1"]


def test_guide_created_after_date() -> None:
    docs: list[dict[str, Any]] = [
        {"_id": 1, "created": "2018-10-30T23:59:59.999000+00:00"},
        {"_id": 2, "created": "2018-10-31T00:00:00+00:00"},
        {"_id": 3, "created": "2018-10-31T00:00:00.000001+00:00"},
        {"_id": 4, "created": "2019-01-01T08:00:00+00:00"},
        {"_id": 5},
        {"_id": 6, "created": "not a date"},
    ]
    assert find(docs, "created>2018-10-31") == [3, 4]
    assert find(docs, "created>=2018-10-31") == [2, 3, 4]
    assert find(docs, "created<2018-10-31") == [1]
    assert find(docs, "created<=2018-10-31") == [1, 2]
    assert find(docs, "created=2018-10-31") == [2]
    assert find(docs, "created!=2018-10-31") == [1, 3, 4, 5, 6]


# --------------------------------------------------------------------------- operators x types

NUM_DOCS: list[dict[str, Any]] = [
    {"_id": "a", "v": 1},
    {"_id": "b", "v": 2.5},
    {"_id": "c", "v": 10},
    {"_id": "d", "v": "2.5"},
    {"_id": "e", "v": True},
    {"_id": "f", "v": None},
    {"_id": "g"},
]


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("v<2.5", ["a"]),
        ("v<=2.5", ["a", "b"]),
        ("v=2.5", ["b", "d"]),  # "d" through the unquoted-number text convenience
        ('v="2.5"', ["d"]),
        ("v!=2.5", ["a", "c", "e", "f", "g"]),
        ("v>=2.5", ["b", "c"]),
        ("v>2.5", ["c"]),
        ("v=1", ["a"]),  # True is not the number 1
        ("v=|[1,10]", ["a", "c"]),
        ("v!=|[1,10]", ["b", "d", "e", "f", "g"]),
        ("v=|[2.5]", ["b", "d"]),
        ("v=~^2", ["d"]),  # a regex only looks at strings
        ("v>-3", ["a", "b", "c"]),
    ],
)
def test_number_values(expr: str, ids: list[str]) -> None:
    assert find(NUM_DOCS, expr) == ids


def test_integer_and_float_compare_as_numbers() -> None:
    assert ok({"v": 3}, "v=3.0") is True
    assert ok({"v": 3.0}, "v=3") is True
    assert ok({"v": 3.5}, "v>3") is True


def test_number_text_convenience_keeps_the_exact_spelling() -> None:
    # 007 is typed as 7, but the string "007" is found through the text, not "7".
    assert ok({"label": "007"}, "label=007") is True
    assert ok({"label": "7"}, "label=007") is False
    assert ok({"label": 7}, "label=007") is True


def test_number_text_convenience_does_not_apply_to_ordering() -> None:
    # As text "99" > "100"; an ordering on a number must not match a string field.
    assert ok({"label": "99"}, "label>100") is False
    assert ok({"label": "100"}, "label>=100") is False


STR_DOCS: list[dict[str, Any]] = [
    {"_id": 1, "s": "apple"},
    {"_id": 2, "s": "Banana"},
    {"_id": 3, "s": "cherry"},
    {"_id": 4, "s": 5},
    {"_id": 5},
]


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("s<banana", [1, 2]),  # case-sensitive: "B" < "a"
        ("s<=apple", [1, 2]),
        ("s=apple", [1]),
        ("s=Apple", []),
        ("s!=apple", [2, 3, 4, 5]),
        ("s>=banana", [3]),
        ("s>apple", [3]),
        ("s=~an", [2]),
        ("s=~(?i)^b", [2]),
        ("s=|[apple,cherry]", [1, 3]),
        ("s!=|[apple,cherry]", [2, 4, 5]),
        ('s="apple"', [1]),
    ],
)
def test_string_values(expr: str, ids: list[int]) -> None:
    assert find(STR_DOCS, expr) == ids


def test_quoted_regex_value_is_literal_text() -> None:
    assert ok({"s": "a.c"}, 's=~"a.c"') is True
    assert ok({"s": "abc"}, 's=~"a.c"') is False
    assert ok({"s": "abc"}, "s=~a.c") is True


NULL_DOCS: list[dict[str, Any]] = [
    {"_id": 1, "v": None},
    {"_id": 2},
    {"_id": 3, "v": 0},
    {"_id": 4, "v": ""},
    {"_id": 5, "v": "null"},
    {"_id": 6, "v": [None, "x"]},
    {"_id": 7, "v": []},
]


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("v=null", [1, 2, 6]),
        ("v!=null", [3, 4, 5, 7]),
        ('v="null"', [5]),
        ("v=|[null,0]", [1, 2, 3, 6]),
        ("v!=|[null,0]", [4, 5, 7]),
        ("v<=null", [1, 2, 6]),
        ("v>=null", [1, 2, 6]),
        ("v<null", []),
        ("v>null", []),
        ("v=~.*", [4, 5, 6]),
        ("v=", [4]),
    ],
)
def test_null_and_missing(expr: str, ids: list[int]) -> None:
    assert find(NULL_DOCS, expr) == ids


TIME_DOCS: list[dict[str, Any]] = [
    {"_id": 1, "t": "2024-03-05T14:02:11.123000+00:00"},
    {"_id": 2, "t": "2024-03-05T16:02:11.123+02:00"},  # the same instant as 1
    {"_id": 3, "t": "2024-03-05T00:00:00Z"},
    {"_id": 4, "t": "2024-03-04T23:30:00-01:00"},  # 2024-03-05T00:30Z
    {"_id": 5, "t": "2024-03-06"},
    {"_id": 6, "t": 20240305},
    {"_id": 7, "t": "yesterday"},
]


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("t=2024-03-05T14:02:11.123Z", [1, 2]),
        ("t=2024-03-05T16:02:11.123+02:00", [1, 2]),
        ("t=2024-03-05T14:02:11.123", [1, 2]),  # naive means UTC
        ("t=2024-03-05", [3]),  # a date is midnight UTC, not the whole day
        ("t>2024-03-05", [1, 2, 4, 5]),
        ("t>=2024-03-05", [1, 2, 3, 4, 5]),
        ("t<2024-03-05T00:30:00", [3]),
        ("t<=2024-03-05T01:30:00+01:00", [3, 4]),
        ("t!=2024-03-05", [1, 2, 4, 5, 6, 7]),
        ("t=|[2024-03-05,2024-03-06]", [3, 5]),
        ("t!=|[2024-03-05,2024-03-06]", [1, 2, 4, 6, 7]),
        ("t>2024-03-05T14:02:11.122999Z", [1, 2, 5]),
        ("t=~^2024-03-05T", [1, 2, 3]),
        ('t="2024-03-05"', []),  # quoted: exact text, which none of them is
        ('t="2024-03-06"', [5]),
    ],
)
def test_dates_and_timestamps(expr: str, ids: list[int]) -> None:
    assert find(TIME_DOCS, expr) == ids


def test_date_value_against_python_datetime_and_date_fields() -> None:
    assert ok({"t": datetime(2024, 3, 5, tzinfo=UTC)}, "t=2024-03-05") is True
    assert ok({"t": datetime(2024, 3, 5, 1)}, "t>2024-03-05") is True  # naive is UTC
    assert ok({"t": date(2024, 3, 5)}, "t=2024-03-05T00:00:00Z") is True
    assert ok({"t": date(2024, 3, 4)}, "t>=2024-03-05") is False


def test_date_text_convenience_on_non_date_string() -> None:
    # A string field that is not a datetime still equals the typed text.
    assert ok({"label": "2024-03-05"}, "label=2024-03-05") is True
    assert ok({"label": "2024-3-5"}, "label=2024-03-05") is False


# --------------------------------------------------------------------------- list fields

TAG_DOCS: list[dict[str, Any]] = [
    {"_id": 1, "tags": ["a", "b"]},
    {"_id": 2, "tags": ["c"]},
    {"_id": 3, "tags": []},
    {"_id": 4},
    {"_id": 5, "tags": "a"},
]


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("tags=a", [1, 5]),
        ("tags!=a", [2, 3, 4]),
        ("tags=|[b,c]", [1, 2]),
        ("tags!=|[b,c]", [3, 4, 5]),
        ("tags=~^[ab]$", [1, 5]),
        ("tags>b", [2]),
        ("tags<b", [1, 5]),
        ("tags=null", [4]),
        ("tags!=null", [1, 2, 3, 5]),
    ],
)
def test_list_fields_match_any_element(expr: str, ids: list[int]) -> None:
    assert find(TAG_DOCS, expr) == ids


def test_list_of_dicts_is_searched_through() -> None:
    docs: list[dict[str, Any]] = [
        {"_id": 1, "files": [{"name": "a.dcm", "size": 10}, {"name": "b.nii", "size": 99}]},
        {"_id": 2, "files": [{"name": "c.txt", "size": 5}]},
        {"_id": 3, "files": []},
    ]
    assert find(docs, "files.name=b.nii") == [1]
    assert find(docs, "files.size>50") == [1]
    assert find(docs, r"files.name=~\.(dcm|txt)$") == [1, 2]
    assert find(docs, "files.name=null") == [3]


def test_numbers_in_list_fields() -> None:
    assert ok({"v": [1, 20, 300]}, "v>250") is True
    assert ok({"v": [1, 20, 300]}, "v>300") is False
    assert ok({"v": [1, "20"]}, "v=20") is True  # "20" through the text convenience
    assert ok({"v": [1, "20"]}, "v>10") is False


# --------------------------------------------------------------------------- type mismatches


@pytest.mark.parametrize(
    ("doc", "expr", "expected"),
    [
        ({"v": "abc"}, "v>5", False),
        ({"v": "abc"}, "v<5", False),
        ({"v": "abc"}, "v!=5", True),
        ({"v": 5}, "v=abc", False),
        ({"v": 5}, "v!=abc", True),
        ({"v": 5}, "v>abc", False),
        ({"v": 5}, "v=~5", False),
        ({"v": 5}, "v=2024-01-01", False),
        ({"v": 5}, "v!=2024-01-01", True),
        ({"v": 5}, "v>2024-01-01", False),
        ({"v": {"x": 1}}, "v=x", False),
        ({"v": {"x": 1}}, "v!=|[x]", True),
        ({"v": True}, "v=true", False),  # no boolean typing: "true" is text
        ({"v": False}, "v<1", False),
        ({"v": "2024-01-02"}, "v>2024-01-01", True),
        ({"v": "2024-01-02"}, 'v>"2024-01-01"', True),  # string vs string
    ],
)
def test_type_mismatches(doc: dict[str, Any], expr: str, expected: bool) -> None:
    assert ok(doc, expr) is expected


# --------------------------------------------------------------------------- hand-built conditions


def test_hand_built_conditions() -> None:
    doc = {"label": "abc", "n": 3}
    assert matches(doc, [Condition("label", "=~", "^a")]) is True
    assert matches(doc, [Condition("n", "=|", 3)]) is True
    assert matches(doc, [Condition("n", "=", 3), Condition("label", "=", "x")]) is False
    with pytest.raises(FilterError):
        matches(doc, [Condition("label", "=~", "(")])
    with pytest.raises(FilterError):
        matches(doc, [Condition("label", "~~", "a")])


# --------------------------------------------------------------------------- sorting


def test_parse_sort() -> None:
    assert parse_sort("") == []
    assert parse_sort("label:asc,created:desc") == [("label", False), ("created", True)]
    assert parse_sort("label") == [("label", False)]
    assert parse_sort("label:DESC, info.age") == [("label", True), ("info.age", False)]


@pytest.mark.parametrize("expr", ["label:up", "label:", ":asc", "label:asc,", "a:asc:desc"])
def test_parse_sort_errors(expr: str) -> None:
    with pytest.raises(FilterError):
        parse_sort(expr)


def test_sort_single_key_asc_and_desc_with_none_first() -> None:
    docs: list[dict[str, Any]] = [
        {"_id": 1, "label": "b"},
        {"_id": 2},
        {"_id": 3, "label": "a"},
        {"_id": 4, "label": None},
        {"_id": 5, "label": "C"},
    ]
    asc = [d["_id"] for d in sort_docs(docs, [("label", False)])]
    assert asc == [2, 4, 5, 3, 1]  # None and missing first, keeping input order; "C" < "a"
    desc = [d["_id"] for d in sort_docs(docs, [("label", True)])]
    assert desc == [1, 3, 5, 2, 4]  # stable: 2 stays before 4


def test_sort_multi_key() -> None:
    docs: list[dict[str, Any]] = [
        {"_id": 1, "g": "x", "n": 2},
        {"_id": 2, "g": "y", "n": 1},
        {"_id": 3, "g": "x", "n": 3},
        {"_id": 4, "g": "y", "n": 5},
        {"_id": 5, "g": "x", "n": 2},
    ]
    ids = [d["_id"] for d in sort_docs(docs, parse_sort("g:asc,n:desc"))]
    assert ids == [3, 1, 5, 4, 2]
    ids = [d["_id"] for d in sort_docs(docs, parse_sort("g:desc,n"))]
    assert ids == [2, 4, 1, 5, 3]


def test_sort_mixed_types_never_raises_and_ranks_types() -> None:
    docs: list[dict[str, Any]] = [
        {"_id": "str", "v": "10"},
        {"_id": "int", "v": 10},
        {"_id": "none"},
        {"_id": "float", "v": 2.5},
        {"_id": "dict", "v": {"a": 1}},
        {"_id": "bool", "v": True},
        {"_id": "nan", "v": float("nan")},
        {"_id": "dt", "v": datetime(2020, 1, 1)},
        {"_id": "dt-aware", "v": datetime(2019, 1, 1, tzinfo=UTC)},
    ]
    ids = [d["_id"] for d in sort_docs(docs, [("v", False)])]
    assert ids == ["none", "nan", "float", "int", "str", "bool", "dt-aware", "dt", "dict"]
    ids = [d["_id"] for d in sort_docs(docs, [("v", True)])]
    assert ids == ["dict", "dt", "dt-aware", "bool", "str", "int", "float", "nan", "none"]


def test_sort_list_fields_by_smallest_ascending_and_largest_descending() -> None:
    docs: list[dict[str, Any]] = [
        {"_id": 1, "tags": ["m", "z"]},
        {"_id": 2, "tags": ["b", "n"]},
        {"_id": 3, "tags": []},
    ]
    assert [d["_id"] for d in sort_docs(docs, [("tags", False)])] == [3, 2, 1]
    assert [d["_id"] for d in sort_docs(docs, [("tags", True)])] == [1, 2, 3]


def test_sort_empty_spec_keeps_order_and_returns_a_new_list() -> None:
    docs: list[dict[str, Any]] = [{"_id": 2}, {"_id": 1}]
    result = sort_docs(docs, [])
    assert result == docs
    assert result is not docs


def test_sort_by_dotted_path() -> None:
    docs: list[dict[str, Any]] = [
        {"_id": 1, "info": {"age": 40}},
        {"_id": 2, "info": {"age": 30}},
        {"_id": 3, "info": {}},
    ]
    assert [d["_id"] for d in sort_docs(docs, parse_sort("info.age:asc"))] == [3, 2, 1]


def test_error_names_the_whole_condition_even_with_commas_inside() -> None:
    with pytest.raises(FilterError) as info:
        parse_filter('label="a,b"x,state=ok')
    assert "'label=\"a,b\"x'" in str(info.value)
    with pytest.raises(FilterError) as info:
        parse_filter("x=|[a,b]c,state=ok")
    assert "'x=|[a,b]c'" in str(info.value)
