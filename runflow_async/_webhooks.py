"""Callback signatures: sign a body, verify a ``Runflow-Signature`` header.

Runflow signs each callback with ``Runflow-Signature``: the lowercase hex
HMAC-SHA256 of the raw request body, keyed with the plain secret from
``POST /v1/callback-secrets`` (the whole ``whsec_...`` string, as UTF-8). There
is no timestamp and no version prefix. See
https://docs.runflow.io/guides/verify-callback-signatures.

This module is pure (stdlib only) so that the emulator can sign its deliveries
with the very function the receiver verifies with.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from runflow_async._core.errors import WebhookVerificationError

__all__ = [
    "REQUEST_ID_HEADER",
    "SIGNATURE_HEADER",
    "SignatureVerifier",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "Runflow-Signature"
REQUEST_ID_HEADER = "Runflow-Request-Id"

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def sign(raw_body: bytes, secret: str) -> str:
    """Return the ``Runflow-Signature`` value for ``raw_body`` under ``secret``.

    Args:
        raw_body: The exact bytes of the request body.
        secret: The plain signing secret, prefix included (``whsec_...``).

    Returns:
        64 lowercase hex digits.
    """
    return hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha256).hexdigest()


class SignatureVerifier:
    """:func:`verify_signature` for a fixed set of secrets, with the keys prepared once.

    Each secret's HMAC key schedule is computed here, and every check copies
    it instead of starting over: a receiver verifies thousands of bodies under
    the same one or two secrets. The checks are exactly :func:`verify_signature`'s.

    Args:
        secrets: The accepted plain secrets, as for :func:`verify_signature`.
    """

    __slots__ = ("_macs",)

    def __init__(self, secrets: Sequence[str]) -> None:
        keys = [secrets] if isinstance(secrets, str) else list(secrets)
        self._macs = tuple(
            hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256) for key in keys if key
        )

    def __repr__(self) -> str:
        return f"SignatureVerifier(<{len(self._macs)} secret(s)>)"

    def verify(self, raw_body: bytes, header: str | None) -> None:
        """Check that ``header`` signs ``raw_body`` under one of the secrets.

        Raises:
            WebhookVerificationError: As :func:`verify_signature` does.
        """
        if not self._macs:
            raise WebhookVerificationError(
                "No callback signing secret is configured, so no callback can be verified.",
                reason="no_secrets",
            )
        if header is None:
            raise WebhookVerificationError(
                f"The callback has no {SIGNATURE_HEADER} header.", reason="missing"
            )
        candidate = header.strip().lower()
        if not _HEX_SHA256.fullmatch(candidate):
            raise WebhookVerificationError(
                f"The callback's {SIGNATURE_HEADER} header is not 64 hex digits.",
                reason="malformed",
            )
        matched = False
        for prepared in self._macs:
            mac = prepared.copy()
            mac.update(raw_body)
            matched |= hmac.compare_digest(mac.hexdigest(), candidate)
        if not matched:
            raise WebhookVerificationError(
                f"The callback's {SIGNATURE_HEADER} does not match its body under any secret.",
                reason="mismatch",
            )


def verify_signature(raw_body: bytes, header: str | None, secrets: Sequence[str]) -> None:
    """Check that ``header`` signs ``raw_body`` under one of ``secrets``.

    Pass the raw body bytes: hashing re-serialised JSON is the usual way
    verification goes wrong. Every secret is tried (during a rotation both the
    old and the new one verify), each in constant time, and all of them are
    always computed so the timing does not tell which one matched. To check
    many bodies under the same secrets, build one :class:`SignatureVerifier`.

    Args:
        raw_body: The exact bytes of the request body.
        header: The ``Runflow-Signature`` header value, or ``None`` if absent.
            Surrounding whitespace and upper-case hex digits are tolerated.
        secrets: The accepted plain secrets. A single ``str`` counts as one
            secret (never as a sequence of one-character secrets); empty
            strings are ignored.

    Raises:
        WebhookVerificationError: The body is not signed by any of the secrets;
            ``reason`` says why (``"no_secrets"``, ``"missing"``,
            ``"malformed"`` or ``"mismatch"``).
    """
    SignatureVerifier(secrets).verify(raw_body, header)
