r"""The ``q`` filter of ``GET /v1/runs``: a tokenizer, a recursive-descent parser, an evaluator.

Grammar (https://docs.runflow.io/concepts/requests: ``status_code:succeeded AND
created_at>2026-04-01``; operators ``= : > < >= <=``, ``AND OR NOT``, parentheses,
case-sensitive strings)::

    query   := or
    or      := and ("OR" and)*
    and     := not ("AND" not)*
    not     := "NOT" not | primary
    primary := "(" or ")" | term
    term    := FIELD OP VALUE        VALUE: bare token or "double-quoted \" escaped"

``:`` and ``=`` are equality. ``< > <= >=`` compare numbers when both sides are
numbers, else strings (ISO timestamps compare correctly as strings). A term on an
unknown field is false rather than an error.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, cast

__all__ = [
    "MISSING",
    "Query",
    "QuerySyntaxError",
    "comparisons",
    "equality_terms",
    "field_names",
    "named_values",
    "parse_query",
    "required_equalities",
]

MISSING: Final = object()
"""What a field getter returns for a field the run does not have."""

_MAX_DEPTH = 64
_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<open>\()
    | (?P<close>\))
    | (?P<field>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op>>=|<=|[:=<>])\s*
      (?P<value>"(?:[^"\\]|\\.)*"|[^\s()"]+)
    | (?P<keyword>AND|OR|NOT)(?![A-Za-z0-9_.])
    )""",
    re.VERBOSE,
)
# One unquoted equality, the whole of each part of a batch poller's "id:a OR id:b ...".
_SIMPLE_TERM = re.compile(r'(?P<field>[A-Za-z_][A-Za-z0-9_.]*)(?P<op>[:=])(?P<value>[^\s()"]+)')
_ESCAPE = re.compile(r"\\(.)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_EQUALITY = frozenset({":", "="})
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ":": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}

Getter = Callable[[str], Any]
"""Returns a run's value for a field name, or ``MISSING``."""


class QuerySyntaxError(ValueError):
    """The ``q`` parameter does not follow the grammar."""


def _number(text: str) -> Decimal | None:
    return Decimal(text) if _NUMBER.fullmatch(text) else None


class Query:
    """A node of a parsed query; ``matches`` evaluates it against one run."""

    __slots__ = ()

    def matches(self, get: Getter) -> bool:
        """Return whether the run behind ``get`` satisfies the query."""
        raise NotImplementedError


class _Term(Query):
    __slots__ = ("field", "number", "op", "text")

    def __init__(self, field: str, op: str, text: str) -> None:
        self.field = field
        self.op = op
        self.text = text
        self.number = _number(text)

    def __repr__(self) -> str:
        return f"{self.field}{self.op}{self.text}"

    def matches(self, get: Getter) -> bool:
        value = get(self.field)
        equality = self.op in _EQUALITY
        if isinstance(value, str):
            if equality:
                return value == self.text
            other = None if self.number is None else _number(value)
            if other is None:
                return _COMPARE[self.op](value, self.text)
            return _COMPARE[self.op](other, self.number)
        if value is None or isinstance(value, bool):
            literal = "null" if value is None else str(value).lower()
            return equality and self.text == literal
        if isinstance(value, int | float) and self.number is not None:
            return _COMPARE[self.op](Decimal(repr(value)), self.number)
        return False


class _Not(Query):
    __slots__ = ("child",)

    def __init__(self, child: Query) -> None:
        self.child = child

    def matches(self, get: Getter) -> bool:
        return not self.child.matches(get)


class _All(Query):
    __slots__ = ("children",)

    def __init__(self, children: Sequence[Query]) -> None:
        self.children = tuple(children)

    def matches(self, get: Getter) -> bool:
        return all(child.matches(get) for child in self.children)


class _Any(_All):
    __slots__ = ()

    def matches(self, get: Getter) -> bool:
        return any(child.matches(get) for child in self.children)


def equality_terms(query: Query, fields: frozenset[str]) -> list[tuple[str, str]] | None:
    """Return the ``(field, value)`` pairs if ``query`` is an OR of equalities on ``fields``.

    That shape (a batch poller's ``id:a OR id:b OR ...``) is answered from indexes.
    """
    terms = query.children if type(query) is _Any else (query,)
    pairs: list[tuple[str, str]] = []
    for term in terms:
        if not isinstance(term, _Term) or term.op not in _EQUALITY or term.field not in fields:
            return None
        pairs.append((term.field, term.text))
    return pairs


def named_values(query: Query, field: str) -> set[str]:
    """Return every value an equality term on ``field`` names anywhere in ``query``.

    ``NOT id:a`` names ``a`` too: the set says which runs the query mentions, not
    which it matches.
    """
    named: set[str] = set()
    stack = [query]
    while stack:
        node = stack.pop()
        if isinstance(node, _Term):
            if node.field == field and node.op in _EQUALITY:
                named.add(node.text)
        elif isinstance(node, _Not):
            stack.append(node.child)
        else:
            stack.extend(cast(_All, node).children)  # the only other nodes: _All, _Any
    return named


def field_names(query: Query) -> set[str]:
    """Return the field of every term of ``query`` (under ``NOT`` too)."""
    names: set[str] = set()
    stack = [query]
    while stack:
        node = stack.pop()
        if isinstance(node, _Term):
            names.add(node.field)
        elif isinstance(node, _Not):
            stack.append(node.child)
        else:
            stack.extend(cast(_All, node).children)
    return names


def comparisons(query: Query, field: str) -> list[tuple[str, str]]:
    """Return the ``(op, value)`` of each ``< > <= >=`` term on ``field`` that ``query`` requires.

    Those are ``query`` itself or operands of a top-level ``AND``: a run that
    matches ``query`` satisfies every one (a time window's ``created_at>=...``).
    """
    children = query.children if type(query) is _All else (query,)
    return [
        (child.op, child.text)
        for child in children
        if isinstance(child, _Term) and child.field == field and child.op not in _EQUALITY
    ]


def required_equalities(
    query: Query, fields: frozenset[str]
) -> tuple[list[tuple[str, str]], Query | None] | None:
    """Split ``query`` into an OR of equalities on ``fields`` and what else it requires.

    Returns:
        ``(pairs, rest)``: ``query`` is that OR of equalities itself (``rest`` is
        ``None``), or an ``AND`` with such an operand, ``rest`` being the other
        operands (a run matches ``query`` if it matches one pair and ``rest``);
        ``None`` if ``query`` has neither shape.
    """
    pairs = equality_terms(query, fields)
    if pairs is not None:
        return pairs, None
    if type(query) is _All:
        children = query.children
        for index, child in enumerate(children):
            pairs = equality_terms(child, fields)
            if pairs is not None:
                rest = children[:index] + children[index + 1 :]
                return pairs, rest[0] if len(rest) == 1 else _All(rest)
    return None


def _tokenize(text: str) -> list[str | _Term]:
    tokens: list[str | _Term] = []
    text = text.rstrip()
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            rest = text[pos:].lstrip()
            where = len(text) - len(rest)
            raise QuerySyntaxError(f"unexpected input at position {where}: {rest[:20]!r}")
        if match["field"] is not None:
            value = match["value"]
            if value.startswith('"'):
                value = _ESCAPE.sub(r"\1", value[1:-1])
            tokens.append(_Term(match["field"], match["op"], value))
        else:
            tokens.append(match.group(match.lastgroup or 0))
        pos = match.end()
    return tokens


class _Parser:
    __slots__ = ("depth", "pos", "tokens")

    def __init__(self, tokens: list[str | _Term]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | _Term | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | _Term:
        item = self.peek()
        if item is None:
            raise QuerySyntaxError("unexpected end of query")
        self.pos += 1
        return item

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise QuerySyntaxError("query is nested too deeply")

    def parse_or(self) -> Query:
        children = [self.parse_and()]
        while self.peek() == "OR":
            self.pos += 1
            children.append(self.parse_and())
        return children[0] if len(children) == 1 else _Any(children)

    def parse_and(self) -> Query:
        children = [self.parse_not()]
        while self.peek() == "AND":
            self.pos += 1
            children.append(self.parse_not())
        return children[0] if len(children) == 1 else _All(children)

    def parse_not(self) -> Query:
        if self.peek() != "NOT":
            return self.parse_primary()
        self.pos += 1
        self.nest()
        node = _Not(self.parse_not())
        self.depth -= 1
        return node

    def parse_primary(self) -> Query:
        item = self.take()
        if isinstance(item, _Term):
            return item
        if item != "(":
            raise QuerySyntaxError(f"expected a term or '(', got {item!r}")
        self.nest()
        node = self.parse_or()
        if self.take() != ")":
            raise QuerySyntaxError("expected ')'")
        self.depth -= 1
        return node


def _simple_or(text: str) -> Query | None:
    """Parse ``a:x OR b:y ...`` (unquoted equalities only); ``None`` for anything else."""
    terms: list[Query] = []
    for part in text.split(" OR "):
        match = _SIMPLE_TERM.fullmatch(part.strip())
        if match is None:
            return None
        terms.append(_Term(match["field"], match["op"], match["value"]))
    return terms[0] if len(terms) == 1 else _Any(terms)


def _simple_group(text: str, alone: bool) -> Query | None:
    """Parse one operand of a top-level ``AND``: ``(simple OR)`` or a bare term."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
        if "(" in text or ")" in text:
            return None
    elif not alone and " OR " in text:
        return None  # "a OR b AND c" groups as "a OR (b AND c)": leave it to the parser
    return _simple_or(text)


def _simple(text: str) -> Query | None:
    """Parse the shapes a batch poller sends with every poll, fast; ``None`` otherwise.

    ``id:a OR id:b ...``, optionally in parentheses and ``AND``-ed with more such
    groups (``(id:a OR id:b) AND (status_code:succeeded OR ...)``). Gives the very
    tree the full parser would, at a fraction of the cost.
    """
    parts = text.split(" AND ")
    if len(parts) == 1:
        return _simple_group(text, alone=True)
    children = [_simple_group(part, alone=False) for part in parts]
    if any(child is None for child in children):
        return None
    return _All([child for child in children if child is not None])


def parse_query(text: str) -> Query | None:
    """Parse ``q``; an empty or blank ``q`` means no filter (``None``).

    Raises:
        QuerySyntaxError: If ``text`` does not follow the grammar.
    """
    simple = _simple(text)
    if simple is not None:
        return simple
    tokens = _tokenize(text)
    if not tokens:
        return None
    parser = _Parser(tokens)
    query = parser.parse_or()
    if parser.pos != len(tokens):
        raise QuerySyntaxError(f"unexpected {tokens[parser.pos]!r} after a complete query")
    return query
