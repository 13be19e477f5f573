"""The ``q`` grammar on its own: parsing, precedence, comparisons and syntax errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from runflow_async.emulator._query import (
    MISSING,
    QuerySyntaxError,
    equality_terms,
    parse_query,
)

RUN: dict[str, Any] = {
    "id": "0190-a",
    "status_code": "succeeded",
    "client_ref": 'say "hi"',
    "created_at": "2026-01-01T00:00:05.000000+00:00",
    "cost": "0.004500",
    "duration_ms": 1500,
    "has_logs": False,
    "batch_id": None,
    "input": {"prompt": "x"},
}


def matches(q: str, run: dict[str, Any] = RUN) -> bool:
    query = parse_query(q)
    assert query is not None
    return query.matches(lambda name: run.get(name, MISSING))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("status_code:succeeded", True),
        ("status_code=succeeded", True),
        ("status_code:Succeeded", False),
        ('client_ref:"say \\"hi\\""', True),
        ("created_at>2026-01-01", True),
        ("created_at<2026-01-01T00:00:05.5", True),
        ("created_at>=2026-01-02", False),
        ("cost>0.004", True),
        ("cost<=0.0045", True),
        ("cost:0.0045", False),  # equality on strings is exact
        ("cost>abc", False),  # compared as strings: "0..." < "abc"
        ("duration_ms>=1500", True),
        ("duration_ms:1500.0", True),
        ("duration_ms<1e3", False),
        ("duration_ms:fast", False),
        ("has_logs:false", True),
        ("has_logs:true", False),
        ("has_logs>false", False),
        ("batch_id:null", True),
        ("batch_id>null", False),
        ("input:x", False),
        ("colour:red", False),
        ("NOT colour:red", True),
        ("id:a OR status_code:succeeded AND duration_ms>2000", False),
        ("status_code:failed OR status_code:succeeded AND duration_ms<2000", True),
        ("(status_code:failed OR status_code:succeeded) AND duration_ms<2000", True),
        ("NOT NOT status_code:succeeded", True),
        ("NOT(status_code:failed)", True),
        ("  status_code : succeeded  ", True),
        ("ORDER:1 OR NOTE:2 OR ANDY:3", False),
    ],
)
def test_terms_and_operators_evaluate_as_documented(q: str, expected: bool) -> None:
    assert matches(q) is expected


@pytest.mark.parametrize(
    "q",
    [
        "status_code:",
        "status_code",
        "(status_code:x",
        "(a:1 b:2)",
        "status_code:x)",
        "a:1 b:2",
        "a:1 AND",
        "OR a:1",
        "NOT",
        '"quoted":1',
        'a:"unterminated',
        "a:b(c)",
        "(" * 70 + "a:1" + ")" * 70,
        "NOT " * 70 + "a:1",
    ],
)
def test_malformed_queries_raise_a_syntax_error(q: str) -> None:
    with pytest.raises(QuerySyntaxError):
        parse_query(q)


def test_blank_queries_mean_no_filter() -> None:
    assert parse_query("") is None
    assert parse_query("   ") is None


def test_syntax_errors_name_what_went_wrong() -> None:
    with pytest.raises(QuerySyntaxError, match=r"unexpected b:2 after a complete query"):
        parse_query("a:1 b:2")
    with pytest.raises(QuerySyntaxError, match="position 4"):
        parse_query("a:1 ?")


def test_or_of_id_and_client_ref_equalities_is_recognised_for_the_index() -> None:
    fields = frozenset({"id", "client_ref"})
    one = parse_query("id:a")
    many = parse_query('id:a OR client_ref:"b c" OR id=d')
    mixed = parse_query("id:a OR status_code:queued")
    compare = parse_query("id>a")
    nested = parse_query("id:a AND client_ref:b")
    assert one is not None
    assert many is not None
    assert equality_terms(one, fields) == [("id", "a")]
    assert equality_terms(many, fields) == [("id", "a"), ("client_ref", "b c"), ("id", "d")]
    for other in (mixed, compare, nested):
        assert other is not None
        assert equality_terms(other, fields) is None


def test_a_200_term_query_parses_in_milliseconds() -> None:
    q = " OR ".join(f"id:0190b4c2-{i:04d}-7000-8000-000000000000" for i in range(200))
    started = time.perf_counter()
    query = parse_query(q)
    assert time.perf_counter() - started < 0.05
    assert query is not None
    assert matches(q, {"id": "0190b4c2-0199-7000-8000-000000000000"})


def _shape(query: Any) -> Any:
    """A comparable picture of a parsed tree: its class and its terms, recursively."""
    children = getattr(query, "children", None)
    if children is not None:
        return (type(query).__name__, [_shape(child) for child in children])
    return (type(query).__name__, repr(query), getattr(query, "number", None))


@pytest.mark.parametrize(
    "q",
    [
        "id:a",
        "id:a OR id:b OR client_ref=c",
        "  id:a  OR id:b ",
        "id=>x OR NOT:b OR x.y:z-1.5",
        "cost:1e3 OR id:AND",
        "(id:a OR id:b)",
        "( id:a OR id:b ) AND (status_code:succeeded OR status_code:failed)",
        "(id:a) AND status_code:failed AND (x:1 OR y:2)",
    ],
)
def test_the_fast_path_for_a_pollers_filter_builds_the_full_parsers_tree(q: str) -> None:
    from runflow_async.emulator import _query

    fast = _query._simple(q)
    full = _query._Parser(_query._tokenize(q)).parse_or()
    assert fast is not None
    assert _shape(fast) == _shape(full)
    assert _shape(parse_query(q)) == _shape(full)


@pytest.mark.parametrize(
    "q",
    [
        "id:a OR OR id:b",
        "id:a or id:b",
        'id:"a b" OR id:c',
        "id>=a OR id:b",
        "(id:a) OR id:b",
        "",
        "id:a OR id:b AND x:y",  # AND binds tighter than OR
        "((id:a)) AND x:y",
        "id:a AND",
        "NOT (id:a) AND x:y",
    ],
)
def test_other_shapes_take_the_full_parser(q: str) -> None:
    from runflow_async.emulator import _query

    assert _query._simple(q) is None
