"""Issue 13: one batch create against odd servers (a tiny inline handler per case)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from runflow_async import (
    BadRequestError,
    CreateOutcomeUnknownError,
    PollPolicy,
    RetryPolicy,
    Run,
    RunflowClient,
    UnprocessableEntityError,
)
from runflow_async._http.batch_answer import BatchSend
from runflow_async._http.batch_create import BatchResult, batch_key, create_batch
from runflow_async._http.create import CreateProgress
from tests.conftest import API_KEY
from tests.test_create import Start

SCALE = 0.001
MODEL = "black-forest-labs/flux-2-klein-9b"
STAMP = "2026-12-04T10:00:00Z"


def client_for(url: str) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE, max_attempts=3),
        poll=PollPolicy(time_scale=SCALE),
    )


def items(n: int) -> list[BatchSend]:
    return [BatchSend(f"rfa-ref-{i}", {"prompt": f"p {i}"}, CreateProgress()) for i in range(n)]


class Server:
    """A batch route, an items endpoint and a run list, each answer scripted by the test."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, Any], str]] = []
        self.calls: list[str] = []
        self.answers: list[web.StreamResponse] = []
        self.items_answer: web.StreamResponse | None = None
        self.listed: dict[str, dict[str, Any]] = {}  # client_ref -> run, once "stored"

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and path.endswith("/batches"):
            self.calls.append("POST")
            self.posts.append((await request.json(), request.headers["Idempotency-Key"]))
            return self.answers.pop(0)
        if path.endswith("/items"):
            self.calls.append("ITEMS")
            return self.items_answer or web.json_response({"items": []})
        if path == "/v1/runs":
            self.calls.append("LIST")
            match = re.fullmatch(r"client_ref:(\S+)", request.query.get("q", ""))
            ref = match[1] if match else None
            found = [self.listed[ref]] if ref in self.listed else []
            return web.json_response({"items": found})
        return web.json_response({"code": "NOT_FOUND", "message": "no"}, status=404)


def created(sent: dict[str, Any], prefix: str = "run") -> web.StreamResponse:
    refs = [entry["client_ref"] for entry in sent["input"]]
    lean = [
        {"id": f"item-{i}", "sequence_index": i, "run_id": f"{prefix}-{ref}", "client_ref": ref}
        for i, ref in enumerate(refs)
    ]
    return web.json_response({"id": "batch-1", "created_at": STAMP, "items": lean}, status=201)


async def run_batch(url: str, sent: list[BatchSend]) -> BatchResult:
    async with client_for(url) as client:
        return await create_batch(client._transport, MODEL, sent)


async def test_a_422_naming_one_item_fails_it_and_sends_the_rest_as_a_new_batch(
    inline_server: Start,
) -> None:
    server = Server()
    sent = items(3)
    error = {"field": "input.1.prompt", "message": "item 1: is required", "code": "required"}
    server.answers.append(
        web.json_response(
            {"code": "VALIDATION_ERROR", "message": "1 error", "errors": [error]}, status=422
        )
    )
    rest = {"input": [{"prompt": "p 0", "client_ref": "rfa-ref-0"}]}
    rest["input"].append({"prompt": "p 2", "client_ref": "rfa-ref-2"})
    server.answers.append(created(rest))
    result = await run_batch(await inline_server(server), sent)
    assert isinstance(result["rfa-ref-1"], UnprocessableEntityError)
    assert "item 1: is required" in str(result["rfa-ref-1"])
    assert isinstance(result["rfa-ref-0"], Run)
    assert result["rfa-ref-0"].id == "run-rfa-ref-0"
    assert isinstance(result["rfa-ref-2"], Run)
    assert result["rfa-ref-2"].batch_id == "batch-1"
    (first, key1), (second, key2) = server.posts
    assert len(first["input"]) == 3
    assert [e["client_ref"] for e in second["input"]] == ["rfa-ref-0", "rfa-ref-2"]
    assert key1 == batch_key(["rfa-ref-0", "rfa-ref-1", "rfa-ref-2"]) != key2
    assert not sent[1].progress.maybe_created


async def test_a_lean_answer_whose_items_cannot_be_read_is_completed_by_client_ref(
    inline_server: Start,
) -> None:
    server = Server()
    sent = items(2)
    server.answers.append(
        web.json_response({"id": "batch-9", "status_code": "queued", "items_total": 2}, status=201)
    )
    server.items_answer = web.json_response({"code": "FORBIDDEN", "message": "no"}, status=403)
    for item in sent:
        server.listed[item.client_ref] = {
            "id": f"found-{item.client_ref}",
            "client_ref": item.client_ref,
        }
    result = await run_batch(await inline_server(server), sent)
    assert {ref: run.id for ref, run in result.items() if isinstance(run, Run)} == {
        "rfa-ref-0": "found-rfa-ref-0",
        "rfa-ref-1": "found-rfa-ref-1",
    }
    assert server.calls[:2] == ["POST", "ITEMS"]
    assert server.calls.count("POST") == 1  # it exists: never sent again


async def test_the_items_endpoint_names_the_runs_of_a_lean_answer(inline_server: Start) -> None:
    server = Server()
    sent = items(2)
    server.answers.append(web.json_response({"id": "batch-9", "items_total": 2}, status=201))
    full = [
        {
            "id": f"item-{i}",
            "sequence_index": i,
            "run": {"id": f"run-{i}", "client_ref": item.client_ref, "status_code": "queued"},
        }
        for i, item in enumerate(sent)
    ]
    server.items_answer = web.json_response({"items": full, "next_pq": None})
    result = await run_batch(await inline_server(server), sent)
    assert [result[i.client_ref].id for i in sent] == ["run-0", "run-1"]  # type: ignore[union-attr]
    assert server.calls == ["POST", "ITEMS"]


async def test_an_item_naming_another_client_ref_is_looked_up_by_its_own(
    inline_server: Start,
) -> None:
    server = Server()
    sent = items(2)
    lean = [
        {"sequence_index": 0, "run_id": "run-theirs", "client_ref": "rfa-someone-else"},
        {"sequence_index": 1, "run_id": "run-1"},  # no client_ref: placed by its index
    ]
    server.answers.append(web.json_response({"id": "b", "items": lean}, status=201))
    server.listed["rfa-ref-0"] = {"id": "run-ours", "client_ref": "rfa-ref-0"}
    result = await run_batch(await inline_server(server), sent)
    assert result["rfa-ref-0"].id == "run-ours"  # type: ignore[union-attr]
    assert result["rfa-ref-1"].id == "run-1"  # type: ignore[union-attr]
    assert server.calls.count("POST") == 1


async def test_a_2xx_that_is_not_json_is_looked_up_and_ends_unknown_when_not_found(
    inline_server: Start,
) -> None:
    server = Server()
    server.answers.append(web.Response(text="<html>ok</html>", content_type="text/html"))
    result = await run_batch(await inline_server(server), items(2))
    assert all(isinstance(e, CreateOutcomeUnknownError) for e in result.values())
    assert server.calls.count("POST") == 1  # it may exist: never sent again


async def test_a_400_ends_every_item_with_it_and_nothing_is_resent(inline_server: Start) -> None:
    server = Server()
    sent = items(3)
    bad = web.json_response({"code": "BAD_REQUEST", "message": "no"}, status=400)
    server.answers.append(bad)
    result = await run_batch(await inline_server(server), sent)
    assert all(isinstance(e, BadRequestError) for e in result.values())
    assert server.calls == ["POST"]
    assert not any(i.progress.maybe_created for i in sent)


async def test_a_lookup_the_server_refuses_leaves_the_items_unknown(inline_server: Start) -> None:
    server = Server()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/runs":
            return web.json_response({"code": "FORBIDDEN", "message": "no"}, status=403)
        return await server(request)

    server.answers.append(web.json_response({"code": "X", "message": "boom"}, status=500))
    result = await run_batch(await inline_server(handler), items(2))
    assert all(isinstance(e, CreateOutcomeUnknownError) for e in result.values())
    assert server.calls == ["POST"]  # ambiguous, and absence cannot be proven: never resent


async def test_after_an_ambiguous_batch_found_items_are_kept_and_absent_ones_resent(
    inline_server: Start,
) -> None:
    # A 500 after the server made item 0 only (a batch it split): item 0 is
    # found by its client_ref; item 1 never shows over the window, so it alone
    # is sent again, as a new batch with its own key.
    server = Server()
    sent = items(2)
    server.answers.append(web.json_response({"code": "X", "message": "boom"}, status=500))
    server.listed["rfa-ref-0"] = {"id": "run-0", "client_ref": "rfa-ref-0"}
    server.answers.append(created({"input": [{"client_ref": "rfa-ref-1"}]}))
    result = await run_batch(await inline_server(server), sent)
    assert result["rfa-ref-0"].id == "run-0"  # type: ignore[union-attr]
    assert result["rfa-ref-1"].id == "run-rfa-ref-1"  # type: ignore[union-attr]
    (_, key1), (second, key2) = server.posts
    assert [e["client_ref"] for e in second["input"]] == ["rfa-ref-1"]
    assert key2 == batch_key(["rfa-ref-1"]) != key1
    assert server.calls.count("LIST") >= 4  # looked again over the window, not once


async def test_an_ambiguous_batch_found_whole_is_adopted_and_never_resent(
    inline_server: Start,
) -> None:
    server = Server()
    sent = items(3)
    server.answers.append(web.json_response({"code": "X", "message": "boom"}, status=502))
    for item in sent:
        server.listed[item.client_ref] = {
            "id": f"r-{item.client_ref}",
            "client_ref": item.client_ref,
        }
    result = await run_batch(await inline_server(server), sent)
    assert all(isinstance(run, Run) for run in result.values())
    assert server.calls.count("POST") == 1


async def test_an_ambiguous_batch_never_seen_is_resent_with_the_same_key(
    inline_server: Start,
) -> None:
    server = Server()
    sent = items(2)
    server.answers.append(web.json_response({"code": "X", "message": "boom"}, status=500))
    server.answers.append(created({"input": [{"client_ref": i.client_ref} for i in sent]}))
    result = await run_batch(await inline_server(server), sent)
    assert all(isinstance(run, Run) for run in result.values())
    (_, key1), (_, key2) = server.posts
    assert key1 == key2  # proven absent over the whole window: the same batch, the same key
