"""Callback signing secrets: ``POST /v1/callback-secrets``.

The plain secret is shown once, in the create response. It is a credential, so
it is kept as a :class:`pydantic.SecretStr`: hidden in reprs, logs and errors.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, SecretStr

from runflow_async._core.errors import RequestValidationError
from runflow_async._http.transport import Transport, parse_response

__all__ = ["CallbackSecret", "create_callback_secret"]

_PATH = "/v1/callback-secrets"


class CallbackSecret(BaseModel):
    """A callback signing secret, as created.

    Attributes:
        plain_secret: The secret (``whsec_...``); read it with
            ``.get_secret_value()`` and store it now: the API never shows it again.
        id: The secret's id.
        label: The label given at creation.
        is_current: Whether new deliveries are signed with it.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    plain_secret: SecretStr
    id: str | None = None
    label: str | None = None
    is_current: bool | None = None
    key_prefix: str | None = None
    created_at: datetime | None = None


async def create_callback_secret(transport: Transport, label: str) -> CallbackSecret:
    """Create a secret; it becomes the current one (the older ones stay valid).

    Sent once, never retried: a retry after a lost answer would leave a second
    secret nobody knows, so failures are raised for the caller to decide.

    Raises:
        RequestValidationError: ``label`` empty or over 255 characters; nothing was sent.
        APIResponseError: The answer has no ``plain_secret``.
    """
    if not 1 <= len(label) <= 255:
        raise RequestValidationError(
            "label must be 1-255 characters.",
            errors=[{"field": "label", "message": "length 1-255"}],
        )
    response = await transport.send("POST", _PATH, json_body={"label": label})
    return parse_response(CallbackSecret, response.data, method="POST", path=_PATH)
