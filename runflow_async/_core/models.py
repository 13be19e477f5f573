"""Response models: runs, their outputs, pages of runs, callbacks and error bodies.

Parsing is tolerant: unknown fields are kept (``model_extra``), unknown status
values are kept as strings, and legacy shapes seen in official clients
(``run_id`` for ``id``; ``error{code,message}``; ``image_urls``/``images`` for
``outputs``) are mapped onto the documented fields.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "TERMINAL_STATUSES",
    "CallbackPayload",
    "GenerationResult",
    "ImageOutput",
    "Run",
    "RunOutput",
    "RunPage",
    "RunStatus",
    "listed_created_at",
    "parse_error_body",
    "run_id_problem",
]

MAX_RUN_ID_LENGTH = 200
"""The longest run id accepted from a create's answer (Runflow's are 36-character UUIDs)."""
_RUN_ID = re.compile(rf"[A-Za-z0-9_~-][A-Za-z0-9._~-]{{0,{MAX_RUN_ID_LENGTH - 1}}}")


def run_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a run id, or ``None`` if it can.

    A run id goes into URL paths and list filters: only URL-unreserved
    characters (no ``/``, ``?``, ``#``, ``%``, whitespace, no leading dot), at
    most :data:`MAX_RUN_ID_LENGTH` of them.
    """
    if value is None:
        return "it is missing"
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a string"
    if not value:
        return "it is empty"
    if len(value) > MAX_RUN_ID_LENGTH:
        return f"it is {len(value)} characters long (more than {MAX_RUN_ID_LENGTH})"
    if _RUN_ID.fullmatch(value) is None:
        return "it has characters that are not allowed in an id"
    return None


class RunStatus(enum.StrEnum):
    """Every run status Runflow's docs and official clients mention."""

    QUEUED = "queued"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL_SUCCEEDED = "partial_succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    # An older docs page spelled it "cancelled"; callbacks still do.
    CANCELLED = "cancelled"
    # Not documented, but official clients treat it as terminal.
    ERRORED = "errored"

    @classmethod
    def parse(cls, value: str | None) -> RunStatus | None:
        """Return the status for ``value``, or ``None`` if it is unknown."""
        try:  # a dict lookup: ``cls(value)`` walks the enum machinery on every read
            return _STATUS_BY_VALUE.get(value)  # type: ignore[arg-type]
        except TypeError:  # not hashable: not a status
            return None


_STATUS_BY_VALUE: dict[str, RunStatus] = {status.value: status for status in RunStatus}


TERMINAL_STATUSES = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.PARTIAL_SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELED,
        RunStatus.CANCELLED,
        RunStatus.ERRORED,
    }
)
_SUCCESS = frozenset({RunStatus.SUCCEEDED, RunStatus.PARTIAL_SUCCEEDED})
_CANCELED = frozenset({RunStatus.CANCELED, RunStatus.CANCELLED})


class ImageOutput(BaseModel):
    """One generated image. Its ``url`` is signed and expires: download it promptly."""

    model_config = ConfigDict(extra="allow", frozen=True)

    url: str
    type: str | None = "image"
    width: int | None = None
    height: int | None = None
    content_type: str | None = None


class RunOutput(BaseModel):
    """The normalized output of a finished run."""

    model_config = ConfigDict(extra="allow", frozen=True)

    outputs: list[ImageOutput] = Field(default_factory=list)
    seed: int | None = None
    model_data: dict[str, Any] | None = None
    nsfw_detected: Any = None
    timing: Any = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_shapes(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("outputs") is not None:
            return data
        if isinstance(data.get("image_urls"), list):
            urls = [u for u in data["image_urls"] if isinstance(u, str)]
            return {**data, "outputs": [{"url": u} for u in urls]}
        if isinstance(data.get("images"), list):  # the upstream (fal) shape
            return {**data, "outputs": [i for i in data["images"] if isinstance(i, dict)]}
        return data


class Run(BaseModel):
    """A run as ``GET /v1/runs/{id}`` returns it; every field but ``id`` may be absent."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    status_code: str | None = None
    target_type: str | None = None
    model_id: str | None = None
    org_id: str | None = None
    input: dict[str, Any] | None = None
    output: RunOutput | None = None
    cost: Decimal | None = None
    cost_breakdown: dict[str, Any] | None = None
    duration_ms: float | None = None
    batch_id: str | None = None
    client_ref: str | None = None
    request_id: str | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failure_code: str | None = None
    failure_message: str | None = None

    @field_validator("cost", mode="before")
    @classmethod
    def _readable_cost(cls, value: Any) -> Any:
        # A cost we cannot use ("NaN", "Infinity", "n/a") is unknown, not a broken
        # run: the run and its images are kept, and the budget counts the estimate.
        if value is None or isinstance(value, Decimal):
            return value if value is None or value.is_finite() else None
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            return None
        return number if number.is_finite() else None

    failure_stage_code: str | None = None
    links: Any = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("id") is None and data.get("run_id") is not None:
            data["id"] = data["run_id"]
        error = data.get("error")
        if isinstance(error, dict):
            for field, key in (("failure_code", "code"), ("failure_message", "message")):
                if data.get(field) is None and isinstance(error.get(key), str):
                    data[field] = error[key]  # of the wrong type: no reason, not a broken run
        # On failure the docs allow "an error envelope" as the output.
        if data.get("output") is not None and not isinstance(data["output"], dict):
            data["output"] = None
        return data

    @property
    def status(self) -> RunStatus | None:
        """The status, or ``None`` when the API sent a value we do not know."""
        return RunStatus.parse(self.status_code)

    @property
    def is_terminal(self) -> bool:
        """Whether the run has finished (in any way)."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        """Whether the run produced its output (fully or partly)."""
        return self.status in _SUCCESS

    @property
    def canceled(self) -> bool:
        """Whether the run was canceled (either spelling)."""
        return self.status in _CANCELED

    @property
    def failure_stage(self) -> str | None:
        """The failing stage (``failure_stage_code``; some docs call it ``failure_stage``)."""
        extra = (self.model_extra or {}).get("failure_stage")
        return self.failure_stage_code or (extra if isinstance(extra, str) else None)

    @property
    def error_code(self) -> str | None:
        """``error.code`` of the older failure shape (official SDKs read it), as sent."""
        error = (self.model_extra or {}).get("error")
        return _text(error.get("code")) if isinstance(error, dict) else None

    @property
    def error_message(self) -> str | None:
        """``error.message`` of the older shape (or ``error`` itself, a string), as sent."""
        error = (self.model_extra or {}).get("error")
        return _text(error.get("message") if isinstance(error, dict) else error)

    @property
    def failure_reason(self) -> str | None:
        """Why the run failed: ``failure_message (failure_code)``, then ``error``'s if it differs.

        The documented fields come first; the older ``error{message, code}``
        shape is added only where it says something they do not.
        """
        documented = _reason(self.failure_message, self.failure_code)
        older = _reason(self.error_message, self.error_code)
        if {self.error_message, self.error_code} <= {self.failure_message, self.failure_code, None}:
            return documented  # the older shape repeats it (or is absent)
        return f"{documented}; error: {older}" if documented else older

    @property
    def images(self) -> list[ImageOutput]:
        """The images produced so far (empty until the run succeeds)."""
        return list(self.output.outputs) if self.output else []

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, status_code={self.status_code!r}, cost={self.cost!r})"


class RunPage(BaseModel):
    """One page of ``GET /v1/runs``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    items: list[Run] = Field(default_factory=list)
    next_cursor: str | None = Field(default=None, alias="next_pq")
    prev_cursor: str | None = Field(default=None, alias="prev_pq")


class CallbackPayload(BaseModel):
    """The body Runflow POSTs to ``callback_url`` when a run (or batch) finishes."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: str | None = None
    run_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    output: dict[str, Any] | None = None
    duration_ms: float | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _error_envelope_output(cls, data: Any) -> Any:
        # On failure the docs allow "an error envelope" as the output.
        output = data.get("output") if isinstance(data, dict) else None
        if output is not None and not isinstance(output, dict):
            return {**data, "output": None}
        return data

    @property
    def run_status(self) -> RunStatus | None:
        """The terminal status, from ``status`` or else from ``event``."""
        status = RunStatus.parse(self.status)
        if status is not None:
            return status
        return _EVENT_STATUS.get(self.event or "")


_EVENT_STATUS = {
    "run.completed": RunStatus.SUCCEEDED,
    "run.succeeded": RunStatus.SUCCEEDED,
    "run.failed": RunStatus.FAILED,
    "run.cancelled": RunStatus.CANCELED,
    "run.canceled": RunStatus.CANCELED,
    "run.partial_succeeded": RunStatus.PARTIAL_SUCCEEDED,
}


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What :meth:`RunflowClient.generate` and :meth:`~RunflowClient.edit` return.

    Attributes:
        run: The finished run, as the API last returned it.
        partial: ``True`` when the run ended ``partial_succeeded``: some
            requested images are missing.
    """

    run: Run
    partial: bool = False

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.run.id

    @property
    def images(self) -> list[ImageOutput]:
        """The generated images (signed URLs that expire)."""
        return self.run.images

    @property
    def cost_usd(self) -> Decimal | None:
        """What the API billed for the run, if it said."""
        return self.run.cost

    @property
    def seed(self) -> int | None:
        """The seed the model used, if reported."""
        return self.run.output.seed if self.run.output else None


def parse_error_body(data: Any) -> tuple[str | None, str | None, list[Any]]:
    """Read ``(code, message, errors)`` from any error body shape we have seen.

    Handles the documented ``{code, message, errors}``, a nested
    ``{"error": {code, message}}``, a proxy's ``{"error": "...", "code"}`` and
    FastAPI's ``{"detail": str | list}``. Where several places could say the
    same thing, the first non-empty value of the right type wins, so a field of
    the wrong type never hides a good one.
    """
    if not isinstance(data, dict):
        return None, None, []
    nested = data.get("error")
    nested_code = nested.get("code") if isinstance(nested, dict) else None
    nested_message = nested.get("message") if isinstance(nested, dict) else nested
    detail = data.get("detail")
    code = _first_text(data.get("code"), nested_code)
    message = _first_text(
        data.get("message"),
        nested_message,
        detail,
        "Request validation failed" if isinstance(detail, list) else None,
    )
    errors = next((e for e in (data.get("errors"), detail) if isinstance(e, list) and e), [])
    return code, message, list(errors)


def _reason(message: str | None, code: str | None) -> str | None:
    return f"{message} ({code})" if message and code else message or code


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _first_text(*values: Any) -> str | None:
    return next((value for value in values if isinstance(value, str) and value), None)


def listed_created_at(item: Any) -> datetime | None:
    """A listed run's ``created_at`` (a dict from a list page), or ``None`` if not usable.

    Usable means an ISO 8601 string with a time zone: list walks compare it with
    bounds in the server's time.
    """
    value = item.get("created_at") if isinstance(item, dict) else None
    try:
        created = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return created if created is not None and created.tzinfo is not None else None
