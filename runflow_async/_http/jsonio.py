"""JSON on the wire: request bodies as bytes, response bodies as values.

Both sit on every request, so both take a faster path through
``pydantic_core`` (Rust) where it gives exactly what the standard ``json``
module would, and fall back to ``json`` everywhere else.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from runflow_async._core.errors import APIResponseError

__all__ = ["dump_json", "parse_json"]

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: dumps builds one per call


def dump_json(value: Any, *, floatless: bool = False) -> bytes:
    """``value`` as the compact JSON bytes a request body carries, those of ``json.dumps``.

    ``floatless``: the caller knows ``value`` holds no float. Then the bytes
    come from ``pydantic_core.to_json`` (in Rust, several times faster) when
    they are the same as the standard encoder's: that is when they are all
    ASCII but DEL, which only the standard encoder escapes (floats may be
    written differently, non-ASCII text is escaped only by it).
    """
    if floatless:
        try:
            fast = pydantic_core.to_json(value)
        except pydantic_core.PydanticSerializationError:
            pass  # not plain JSON: the standard encoder says why
        else:
            if fast.isascii() and b"\x7f" not in fast:
                return fast
    return _ENCODER.encode(value).encode()


def parse_json(body: bytes, status: int, request_id: str | None, method: str, path: str) -> Any:
    """A 2xx body as JSON (``None`` when empty), read as ``json.loads`` reads it.

    Raises:
        APIResponseError: It is not JSON.
    """
    if not body.strip():
        return None
    try:
        # jiter (pydantic_core) reads plain UTF-8 JSON several times faster; anything
        # it refuses (another encoding, a lone surrogate, ...) is read by json.
        return pydantic_core.from_json(body)
    except ValueError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise APIResponseError(
            f"HTTP {status} response body is not JSON",
            status=status,
            request_id=request_id,
            retryable=False,
            method=method,
            path=path,
        ) from exc
