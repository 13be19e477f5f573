"""Who may call what: bearer tokens on API routes, signed query strings on presigned ones.

Presigned URLs (output files, asset uploads and asset contents) carry their own
credentials in ``exp`` and ``sig``; a client must never send its API key to them,
which :func:`~runflow_async.emulator._middleware.refuse_credentials` enforces.
"""

from __future__ import annotations

from aiohttp import web

from runflow_async.emulator._responses import error_response
from runflow_async.emulator._state import EmulatorState

__all__ = ["presigned_problem", "presigned_refusal", "unauthorized"]


def unauthorized(request: web.Request, state: EmulatorState) -> web.Response | None:
    """Return a 401 unless ``request`` carries an accepted bearer token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    keys = state.config.api_keys
    if scheme.lower() != "bearer" or not token:
        message = "Missing or malformed bearer token."
    elif keys is not None and token not in keys:
        message = "Invalid API key."
    else:
        return None
    return error_response(401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": "Bearer"})


def presigned_problem(request: web.Request, state: EmulatorState) -> str | None:
    """Return ``"signature"`` or ``"expired"`` if the presigned ``request`` is refused, else None.

    The signature is checked first, so a tampered URL is a signature problem
    even when it has also expired.
    """
    expires = request.query.get("exp", "")
    if not state.signer.verify(request.path, expires, request.query.get("sig", "")):
        return "signature"
    if state.clock.epoch_seconds(state.clock.now()) > int(expires):
        return "expired"
    return None


def presigned_refusal(request: web.Request, state: EmulatorState) -> web.Response | None:
    """Return a 403 unless ``request``'s ``exp`` and ``sig`` sign its path and are still valid.

    A tampered URL is ``SIGNATURE_MISMATCH`` even when it has also expired.
    """
    problem = presigned_problem(request, state)
    if problem == "signature":
        return error_response(403, "SIGNATURE_MISMATCH", "The URL signature is invalid.")
    if problem == "expired":
        return error_response(403, "URL_EXPIRED", "The URL has expired; fetch a fresh one.")
    return None
