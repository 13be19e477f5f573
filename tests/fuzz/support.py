"""Strategies and helpers shared by the fuzz suites."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from runflow_async import RunStatus

# Plain JSON (what json.dumps writes and json.loads reads back as equal).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
# What a careless server might send: NaN and infinities included (json.loads accepts them).
wild_json: st.SearchStrategy[Any] = st.recursive(
    json_scalars | st.floats(),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)

STATUS_CODES = [s.value for s in RunStatus] + ["", "QUEUED", "done", "pending"]
_timestamps = st.datetimes().map(lambda d: d.isoformat()) | st.sampled_from(
    ["2026-04-08T12:00:00+00:00", "2026-04-08T12:00:00Z", "yesterday", "", "2026-13-01"]
)
_decimals = (
    st.decimals(allow_nan=False, allow_infinity=False).map(str)
    | st.sampled_from(["0.0045", "-0", "1e3", "NaN", "Infinity", "", "abc"])
    | st.integers(4000, 5000).map(lambda n: "1" * n)  # an absurdly long amount
)


def _either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right type, sometimes any JSON value at all."""
    return st.one_of(good, good, wild_json)


_image_dicts = st.fixed_dictionaries(
    {"url": _either(st.text(max_size=20))},
    optional={
        "type": _either(st.sampled_from(["image", "video"])),
        "width": _either(st.integers(0, 4096)),
        "height": _either(st.integers(0, 4096)),
        "content_type": _either(st.just("image/png")),
    },
)
_output_dicts = st.fixed_dictionaries(
    {},
    optional={
        "outputs": _either(st.lists(_either(_image_dicts), max_size=3)),
        "image_urls": _either(st.lists(_either(st.text(max_size=20)), max_size=3)),
        "images": _either(st.lists(_either(_image_dicts), max_size=3)),
        "seed": _either(st.integers()),
        "model_data": _either(st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
        "nsfw_detected": wild_json,
        "timing": wild_json,
    },
)
_run_dicts: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "id": _either(st.text(min_size=1, max_size=20)),
        "run_id": _either(st.text(min_size=1, max_size=20)),
        "status_code": _either(st.sampled_from(STATUS_CODES)),
        "output": _either(_output_dicts),
        "cost": _either(_decimals),
        "duration_ms": _either(st.floats(allow_nan=False) | st.integers()),
        "client_ref": _either(st.text(max_size=20)),
        "metadata": _either(st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
        "input": _either(st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
        "created_at": _either(_timestamps),
        "completed_at": _either(_timestamps),
        "error": _either(st.fixed_dictionaries({"code": st.text(), "message": st.text()})),
        "failure_code": _either(st.text(max_size=10)),
        "failure_message": _either(st.text(max_size=10)),
        "failure_stage": wild_json,
    },
)
# Hypothesis prints a strategy's repr in some reports; deferred keeps it short.
run_dicts = st.deferred(lambda: _run_dicts)
"""Run-shaped dicts whose fields are mostly of the right type, sometimes anything."""

# Well-formed runs, as the documented API would send them.
good_runs: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=20),
        "status_code": st.sampled_from(STATUS_CODES),
        "client_ref": st.text(max_size=20) | st.none(),
    },
    optional={
        "cost": _decimals.filter(lambda s: s not in ("NaN", "Infinity", "", "abc")),
        "output": st.fixed_dictionaries(
            {"outputs": st.lists(st.fixed_dictionaries({"url": st.text(max_size=20)}))}
        ),
    },
)


def dumps(value: Any) -> bytes:
    """JSON bytes, sometimes non-ASCII UTF-8."""
    return json.dumps(value, ensure_ascii=False).encode()


def _prefixes(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, max(0, len(data) - 1)).map(lambda n: data[:n])


SPECIAL_BODIES = [
    b"",
    b" ",
    b"null",
    b"NaN",
    b"[]",
    b"{}",
    b'"a string"',
    b"<html><body>502 Bad Gateway</body></html>",
    b"\xff\xfe{\x00}\x00",
    b'\xef\xbb\xbf{"id": "bom"}',
    b'{"id": "x"} trailing',
    b'{"id": "' + b"\xc3\x28" + b'"}',
]
_bodies: st.SearchStrategy[bytes] = st.one_of(
    wild_json.map(dumps),
    _run_dicts.map(dumps),
    _run_dicts.map(dumps).flatmap(_prefixes),  # truncated, but complete as far as HTTP goes
    st.binary(max_size=40),
    st.sampled_from(SPECIAL_BODIES),
    st.integers(1_000, 60_000).map(lambda n: b"[" * n),  # nesting deeper than any parser allows
    st.integers(1_000, 20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)
bodies = st.deferred(lambda: _bodies)
"""Response bodies: JSON, runs whole or truncated, bytes, HTML, absurdly deep nesting."""
_OK = (200, 201, 202, 204, 299)
_ODD = (301, 304, 418, 599)
_ERRORS = (400, 401, 402, 403, 404, 409, 422, 429, 500, 502, 503, 504)
statuses = st.sampled_from([*_OK, *_ODD, *_ERRORS])


NO_BODY = (204, 304)  # HTTP forbids a body, so none is sent


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``cut`` declares a longer body and drops the connection.

    Its ``body`` is ignored for the statuses in ``NO_BODY``.
    """

    status: int = 200
    body: bytes = b""
    cut: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    def rendered(self, ref: str) -> bytes:
        """The body with ``@REF@`` replaced by ``ref``."""
        return self.body.replace(b"@REF@", ref.encode())

    async def send(self, request: web.Request, *, ref: str = "") -> web.StreamResponse:
        """Answer ``request``; ``@REF@`` in the body becomes ``ref``."""
        body = self.rendered(ref)
        if self.status in NO_BODY:
            return web.Response(status=self.status, headers=dict(self.headers))
        if not self.cut:
            return web.Response(status=self.status, body=body, headers=dict(self.headers))
        response = web.StreamResponse(status=self.status, headers=dict(self.headers))
        response.content_length = len(body) + 10
        await response.prepare(request)
        await response.write(body)
        assert request.transport is not None
        request.transport.close()
        return response


header_sets = st.lists(
    st.tuples(
        st.sampled_from(["Retry-After", "X-Request-Id", "Content-Type"]),
        st.sampled_from(["1", "-3", "1e309", "nan", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"])
        | st.sampled_from(["text/html", "application/json; charset=latin-1", "abc-123"]),
    ),
    max_size=2,
    unique_by=lambda h: h[0],
).map(tuple)
_replies: st.SearchStrategy[Reply] = st.builds(
    Reply,
    status=st.sampled_from([200, 201]) | statuses,
    body=_bodies | good_runs.map(dumps),
    cut=st.booleans() | st.just(False),  # cut off a third of the time
    headers=header_sets,
)

replies = st.deferred(lambda: _replies)
"""Any status, any body, sometimes cut off mid-transfer, odd headers."""


@dataclass
class Script:
    """Answers each method's requests in order (repeating its last reply) and logs them.

    ``@REF@`` in a body becomes the ``client_ref`` of the latest POST; ``posted``
    keeps each POST's ``Idempotency-Key`` and raw body.
    """

    gets: list[Reply] = field(default_factory=lambda: [Reply()])
    posts: list[Reply] = field(default_factory=lambda: [Reply()])
    log: list[tuple[str, Reply]] = field(default_factory=list)
    posted: list[tuple[str | None, bytes]] = field(default_factory=list)
    ref: str = ""

    def count(self, method: str) -> int:
        """How many requests with ``method`` were answered."""
        return sum(m == method for m, _ in self.log)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            raw = await request.read()
            self.posted.append((request.headers.get("Idempotency-Key"), raw))
            self.ref = str(json.loads(raw).get("client_ref", ""))
        queue = self.posts if request.method == "POST" else self.gets
        reply = queue[min(self.count(request.method), len(queue) - 1)]
        self.log.append((request.method, reply))
        return await reply.send(request, ref=self.ref)


class Stage:
    """One inline server for all of a property's examples; each installs its own script."""

    def __init__(self) -> None:
        self.script = Script()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self.script.handle(request)

    def play(self, script: Script) -> Script:
        """Install ``script`` for the next example and return it."""
        self.script = script
        return script


def async_settings(**overrides: Any) -> settings:
    """Settings for properties that do real loopback I/O per example.

    A fifth of the profile's examples, and function-scoped fixtures allowed:
    the server fixture is shared by the examples, which reset its script.
    """
    return settings(
        settings(),
        max_examples=max(10, settings().max_examples // 5),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        **overrides,
    )
