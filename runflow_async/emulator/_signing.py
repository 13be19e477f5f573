"""Presigned output URLs: an HMAC over the path and an expiry in emulated epoch seconds.

Like the real read paths (which re-sign asset URLs on every read), every rendering of
a run signs its URLs afresh with ``url_ttl`` from now.
"""

from __future__ import annotations

import hashlib
import hmac
import math

__all__ = ["UrlSigner"]


class UrlSigner:
    """Signs and checks ``/files/...`` URLs with a key derived from the seed."""

    __slots__ = ("_key",)

    def __init__(self, seed: int) -> None:
        self._key = hashlib.sha256(f"runflow-emulator-urls:{seed}".encode()).digest()

    def signature(self, path: str, expires: int) -> str:
        """Return the hex HMAC-SHA256 of ``path`` valid until ``expires``."""
        return hmac.digest(self._key, f"{path}\n{expires}".encode(), "sha256").hex()

    def sign(self, base: str, path: str, expires_at: float) -> str:
        """Return the absolute URL of ``path`` under ``base``, valid until ``expires_at``.

        Args:
            base: Scheme and host, e.g. ``http://127.0.0.1:8787``.
            path: The file path.
            expires_at: Emulated epoch seconds; rounded up to a whole second.
        """
        expires = math.ceil(expires_at)
        return f"{base}{path}?exp={expires}&sig={self.signature(path, expires)}"

    def verify(self, path: str, expires: str, signature: str) -> bool:
        """Return whether ``signature`` is the one this signer gives ``path`` and ``expires``."""
        if not (expires.isascii() and expires.isdigit()):
            return False
        return hmac.compare_digest(self.signature(path, int(expires)), signature)
