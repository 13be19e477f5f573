"""Creates against a server that answers anything: never resent unless provably not created.

The rules (runflow_async._http.create): a create is sent again only after an answer
that proves nothing was created (429; 503 ``MODEL_UNAVAILABLE``) or after a
lookup by ``client_ref`` (``GET /v1/runs?q=client_ref:...``) whose readable
answer holds no run. A 2xx, readable or not, is never followed by another POST.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from hypothesis import event, given
from hypothesis import strategies as st

from runflow_async import (
    APIError,
    CreateOutcomeUnknownError,
    GenerateRequest,
    Run,
    RunflowError,
    RunPage,
)
from runflow_async._core.models import parse_error_body
from tests.conftest import make_client
from tests.fuzz.support import NO_BODY, Reply, Script, Stage, async_settings, replies

MAX_ATTEMPTS = 5
LIMIT = 10
REQUEST = GenerateRequest(prompt="a kite over the dunes", image_size="square")


def ok(reply: Reply) -> bool:
    return 200 <= reply.status < 300


CREATED = Reply(201, b'{"id": "run-1", "status_code": "queued", "client_ref": "@REF@"}')
EMPTY = Reply(200, b'{"items": [], "next_pq": null}')
FOUND = Reply(
    200, b'{"items": [{"id": "found-1", "status_code": "queued", "client_ref": "@REF@"}]}'
)
FOREIGN = Reply(200, b'{"items": [{"id": "other", "client_ref": "not-ours"}]}')
UNAVAILABLE = Reply(503, b'{"code": "MODEL_UNAVAILABLE", "message": "provider down"}')
post_replies = st.one_of(
    st.sampled_from(
        [
            CREATED,
            Reply(429, b'{"code": "RATE_LIMITED"}'),
            Reply(429, b"", headers=(("Retry-After", "1"),)),
            UNAVAILABLE,
            Reply(500),
            Reply(502, b"<html>bad gateway</html>"),
            Reply(409, b'{"code": "CONFLICT"}'),
            Reply(422, b'{"code": "VALIDATION_ERROR", "errors": []}'),
            Reply(201, b'{"id": "run-1", "status'),  # a readable status, an unreadable run
            Reply(201, b"{}"),
        ]
    ),
    replies,
)
lookup_replies = st.sampled_from([EMPTY, FOUND, FOREIGN, Reply(500), Reply(404)]) | replies


def readable(reply: Reply, model: type[Run] | type[RunPage], ref: str = "") -> Run | RunPage | None:
    """The model the client reads from ``reply``, or ``None`` if it cannot read one."""
    if reply.cut or not ok(reply) or reply.status in NO_BODY:
        return None
    body = reply.rendered(ref)
    try:
        return model.model_validate(json.loads(body) if body.strip() else None)
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        return None


def not_created(reply: Reply) -> bool:
    """Whether the client can tell from ``reply`` that nothing was created."""
    if reply.cut or reply.status not in (429, 503):
        return False
    if reply.status == 429:
        return True
    try:
        data: Any = json.loads(reply.body)
    except (ValueError, RecursionError):
        return False
    return parse_error_body(data)[0] == "MODEL_UNAVAILABLE"


def proves_absent(reply: Reply) -> bool:
    page = readable(reply, RunPage)
    return isinstance(page, RunPage) and not page.items


def check_resends(log: list[tuple[str, Reply]]) -> None:
    """Each POST after the first follows a proof that the one before created nothing."""
    last_post: Reply | None = None
    last_lookup: Reply | None = None
    for method, reply in log:
        if method == "GET":
            last_lookup = reply
            continue
        if last_post is not None:
            assert not ok(last_post), f"a POST after a {last_post.status}: {log}"
            looked_up = last_lookup is not None and proves_absent(last_lookup)
            assert not_created(last_post) or looked_up, f"resent blindly: {log}"
        last_post, last_lookup = reply, None


@async_settings()
@given(
    posts=st.lists(post_replies, min_size=1, max_size=5),
    lookups=st.lists(lookup_replies, min_size=1, max_size=4),
)
async def test_creates_are_never_resent_blindly(
    stage: Stage, posts: list[Reply], lookups: list[Reply]
) -> None:
    script = stage.play(Script(gets=lookups, posts=posts))
    outcome: Run | RunflowError
    async with make_client(stage.url) as client:
        with anyio.fail_after(LIMIT):
            try:
                outcome = await client.submit(REQUEST)
            except RunflowError as exc:
                outcome = exc
    event(f"POSTs: {script.count('POST')}, lookups: {script.count('GET')}")
    event(f"outcome: {type(outcome).__name__}")
    assert 1 <= script.count("POST") <= MAX_ATTEMPTS
    check_resends(script.log)
    # Every attempt is the same create: one body, one Idempotency-Key, one client_ref.
    assert len(set(script.posted)) == 1
    key, raw = script.posted[0]
    assert key
    assert json.loads(raw)["client_ref"] == script.ref
    at = max(i for i, (method, _) in enumerate(script.log) if method == "POST")
    last_post = script.log[at][1]
    lookups_after = [reply for method, reply in script.log[at:] if method == "GET"]
    if isinstance(outcome, Run):
        # Either the create's own answer, or the run a lookup found by client_ref.
        found = readable(lookups_after[-1], RunPage, script.ref) if lookups_after else None
        assert outcome == readable(last_post, Run, script.ref) or (
            isinstance(found, RunPage) and found.items and outcome == found.items[0]
        ), (outcome, script.log)
    else:
        assert isinstance(outcome, APIError), repr(outcome)
        if ok(last_post):
            # Accepted but unreadable, and not found again: the outcome is unknown.
            assert isinstance(outcome, CreateOutcomeUnknownError), repr(outcome)
            assert outcome.client_ref == script.ref


async def submit(stage: Stage, script: Script) -> Run | RunflowError:
    stage.play(script)
    async with make_client(stage.url) as client:
        with anyio.fail_after(LIMIT):
            try:
                return await client.submit(REQUEST)
            except RunflowError as exc:
                return exc


async def test_a_created_run_whose_answer_is_cut_off_is_never_resent(stage: Stage) -> None:
    # Found by test_creates_are_never_resent_blindly with posts=[201 cut], lookups=[empty].
    script = Script(gets=[EMPTY], posts=[Reply(201, CREATED.body, cut=True)])
    outcome = await submit(stage, script)
    assert script.count("POST") == 1, script.log
    assert isinstance(outcome, CreateOutcomeUnknownError)


def test_the_resend_oracle_refuses_a_blind_resend() -> None:
    # The checker itself must fail on the histories it exists to catch.
    for history in (
        [("POST", Reply(500)), ("POST", CREATED)],
        [("POST", Reply(500)), ("GET", FOUND), ("POST", CREATED)],
        [("POST", Reply(201, b"{}")), ("GET", EMPTY), ("POST", CREATED)],
        [("POST", Reply(429, cut=True)), ("POST", CREATED)],
    ):
        try:
            check_resends(history)
        except AssertionError:
            continue
        raise AssertionError(f"accepted {history}")
    check_resends(
        [
            ("POST", Reply(429)),
            ("POST", UNAVAILABLE),
            ("POST", Reply(500)),
            ("GET", EMPTY),
            ("POST", CREATED),
        ]
    )
    assert readable(Reply(201, b'{"id": "x"}'), Run) == Run(id="x")
