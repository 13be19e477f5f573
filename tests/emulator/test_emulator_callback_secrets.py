"""Callback signing secrets: creation, listing, rotation and disabling."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.emulator.callback_receiver import QUICK, history, receiving
from tests.emulator.emulator_support import AUTH, Harness, running

SECRETS = "/v1/callback-secrets"


async def _list(h: Harness) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await h.get(SECRETS))["items"]
    return items


async def _delete(h: Harness, secret_id: str) -> tuple[int, bytes]:
    async with h.http.delete(f"{SECRETS}/{secret_id}", headers=AUTH) as resp:
        return resp.status, await resp.read()


async def test_a_new_secret_is_shown_once_and_is_current() -> None:
    async with running(seed=5) as h:
        created = await h.post(SECRETS, {"label": "production"})
        (listed,) = await _list(h)
    plain = created.pop("plain_secret")
    assert re.fullmatch(r"whsec_[0-9a-f]{32}", plain)
    assert created["key_prefix"] == plain[:10]
    assert created["is_current"] is True
    assert created["label"] == "production"
    assert created["org_id"]
    assert created["disabled_at"] is None
    assert created["last_used_at"] is None
    assert created["created_at"] == created["updated_at"]
    assert created["created_at"].endswith("+00:00")
    assert listed == created  # the same record, without the plain secret


async def test_secrets_are_drawn_from_the_seed() -> None:
    plains = []
    for seed in (5, 5, 6):
        async with running(seed=seed) as h:
            plains.append((await h.post(SECRETS, {"label": ""}))["plain_secret"])
    assert plains[0] == plains[1] != plains[2]


async def test_rotation_signs_with_the_newest_enabled_secret() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        old = await h.post(SECRETS, {"label": "old"})
        new = await h.post(SECRETS, {"label": "new"})
        first = await h.create(callback_url=rx.url)
        (got,) = await rx.wait_for(1)
        (delivery,) = await history(h, first["id"])
        listed = await _list(h)
        assert await _delete(h, new["id"]) == (204, b"")
        await h.create(callback_url=rx.url)
        _, after_disable = await rx.wait_for(2)
        assert await _delete(h, old["id"]) == (204, b"")
        await h.create(callback_url=rx.url)
        *_, unsigned = await rx.wait_for(3)
        final = await _list(h)
    assert got.signed_with(new["plain_secret"])
    assert not got.signed_with(old["plain_secret"])
    assert delivery["signing_secret_id"] == new["id"]
    assert [s["is_current"] for s in listed] == [False, True]
    assert listed[1]["last_used_at"] is not None
    assert listed[0]["last_used_at"] is None
    assert all("plain_secret" not in s for s in listed)
    assert after_disable.signed_with(old["plain_secret"])
    assert "Runflow-Signature" not in unsigned.headers
    assert [s["is_current"] for s in final] == [False, False]
    assert all(s["disabled_at"] is not None for s in final)
    assert final[1]["updated_at"] == final[1]["disabled_at"]


async def test_disabling_is_idempotent_and_unknown_secrets_are_404() -> None:
    async with running() as h:
        secret = await h.post(SECRETS, {"label": "x"})
        assert (await _delete(h, secret["id"]))[0] == 204
        (once,) = await _list(h)
        assert (await _delete(h, secret["id"]))[0] == 204
        (twice,) = await _list(h)
        status, body = await _delete(h, "nope")
    assert once["disabled_at"] == twice["disabled_at"] is not None
    assert status == 404
    assert b'"code":"SECRET_NOT_FOUND"' in body


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({}, "label", "required"),
        ({"label": 7}, "label", "invalid_type"),
        ({"label": "x" * 256}, "label", "too_long"),
        (["label"], "body", "invalid_type"),
        (None, "body", "invalid_type"),
    ],
)
async def test_an_invalid_secret_request_is_422(body: Any, field: str, code: str) -> None:
    async with running() as h:
        answer = await h.post(SECRETS, body, expect=422)
        assert await _list(h) == []
    assert answer["code"] == "VALIDATION_ERROR"
    assert answer["errors"] == [
        {"field": field, "message": answer["errors"][0]["message"], "code": code}
    ]


async def test_a_secret_request_that_is_not_json_is_400() -> None:
    async with running() as h, h.http.post(SECRETS, data=b"{", headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "BAD_REQUEST"


async def test_the_secret_routes_want_the_api_key() -> None:
    async with running() as h:
        for method in ("POST", "GET"):
            async with h.http.request(method, SECRETS, json={"label": "x"}) as resp:
                assert resp.status == 401
        async with h.http.delete(f"{SECRETS}/x") as resp:
            assert resp.status == 401
        redeliver = "/v1/runs/x/callback-redeliveries"
        async with h.http.post(redeliver) as resp:
            assert resp.status == 401
