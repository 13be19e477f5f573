"""Refusals of the presigned upload PUT, in the XML that S3-style storage answers.

The ``upload_url`` of a session points at object storage (S3 or R2), not at the
API, and such storage refuses a request with an XML document, not with the API's
JSON envelope::

    <?xml version="1.0" encoding="UTF-8"?>
    <Error><Code>AccessDenied</Code><Message>Request has expired</Message>
    <RequestId>...</RequestId></Error>

Codes, as S3 uses them: an expired URL is ``403 AccessDenied``; a tampered URL, or
a ``Content-Type`` other than the declared one (a signed header), is ``403
SignatureDoesNotMatch``; a body shorter than declared is ``400 IncompleteBody``,
a longer one ``400 EntityTooLarge``; a session that does not exist is ``404
NoSuchUpload``, and one already confirmed ``409 OperationAborted`` (the last two
are the emulator's reading: storage has no notion of a confirmation).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from aiohttp import web

from runflow_async.emulator._middleware import REQUEST_ID

__all__ = ["storage_error"]

_XML_TYPE = "application/xml"


def storage_error(status: int, code: str, message: str) -> web.Response:
    """Return an S3-style XML error document with ``status``."""
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{escape(REQUEST_ID.get())}</RequestId></Error>"
    )
    return web.Response(text=document, status=status, content_type=_XML_TYPE)
