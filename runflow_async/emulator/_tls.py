"""HTTPS for the emulator: a throwaway CA and a loopback server certificate, by ``trustme``.

Real storage and the real API are HTTPS, and some clients (the official JS SDK
among them) refuse a presigned ``upload_url`` that is not. With
``EmulatorConfig.tls`` the emulator generates, at start-up, a fresh certificate
authority and a server certificate for ``127.0.0.1``, ``::1`` and ``localhost``
(plus ``host`` when it is another name), writes the CA certificate (PEM) into a
temporary directory of its own, and removes that directory when it closes. A
client trusts the emulator with ``ssl.create_default_context(cafile=emu.ca_file)``.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

__all__ = ["TlsMaterial"]

_IDENTITIES = ("127.0.0.1", "::1", "localhost")


class TlsMaterial:
    """A CA, a server certificate it signed, and the CA file written for clients.

    Args:
        host: The address the emulator listens on (added to the certificate's
            names when it is not one of the loopback ones).

    Raises:
        RuntimeError: If ``trustme`` is not installed (the ``emulator`` extra).
    """

    __slots__ = ("_dir", "ca_file", "server_context")

    def __init__(self, host: str) -> None:
        try:
            import trustme  # only TLS needs it
        except ImportError as exc:  # pragma: no cover - the extras install it
            raise RuntimeError(
                "the emulator's --tls needs trustme: pip install 'runflow-async[emulator]'"
            ) from exc
        identities = _IDENTITIES if host in _IDENTITIES else (*_IDENTITIES, host)
        authority = trustme.CA()
        certificate = authority.issue_cert(*identities)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self.server_context = context
        self._dir: str | None = tempfile.mkdtemp(prefix="runflow-emulator-tls-")
        path = Path(self._dir) / "ca.pem"
        authority.cert_pem.write_to_path(str(path))
        self.ca_file = str(path)

    def client_context(self) -> ssl.SSLContext:
        """Return a client ``SSLContext`` that trusts this CA (and verifies host names)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def remove(self) -> None:
        """Delete the CA file and its directory; calling it again does nothing."""
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
