"""A stored run and its API view, derived lazily from the emulated clock on every read.

Phases of a run of duration ``d`` created at ``t``: ``queued`` on ``[t, t+0.1d)``,
``dispatching`` on ``[t+0.1d, t+0.2d)``, ``running`` on ``[t+0.2d, t+d)``, then
``succeeded`` or ``failed``. Field names follow the Run object of
https://docs.runflow.io/api-reference/runs/get-run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from runflow_async._pricing import Size
from runflow_async.emulator._clock import EmulatedClock
from runflow_async.emulator._query import MISSING
from runflow_async.emulator._validation import CreateRequest

if TYPE_CHECKING:
    from runflow_async.emulator._deliveries import Delivery

__all__ = ["EXTENSIONS", "RUN_FIELDS", "RunRecord", "UrlFor", "phase"]

UrlFor = Callable[[str], str]
"""Turns a file path (``/files/...``) into a freshly signed absolute URL."""

EXTENSIONS: Mapping[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
"""File extension of each ``output_format``."""

_DISPATCH_AT = 0.1
_RUNNING_AT = 0.2
_CONTENT_TYPES: Mapping[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# Fields of the documented Run object the emulator has nothing to say about.
_NULL_FIELDS = (
    "flow_id",
    "comfyui_workflow_id",
    "target_version",
    "context",
    "cost_breakdown",
    "nodes_total",
    "nodes_completed",
    "resolved_template_id",
    "jurisdiction_code",
    "flow_version_id",
    "created_by",
    "links",
    "feedback_is_positive",
    "feedback_reason",
    "source_chat_message_id",
    "current_evaluation_summary",
)
_CONSTANTS: Mapping[str, Any] = {
    **dict.fromkeys(_NULL_FIELDS),
    "target_type": "model",
    "source_code": "api",
    "has_logs": False,
    "has_node_runs": False,
}
_DERIVED = (
    "status_code",
    "output",
    "duration_ms",
    "cost",
    "started_at",
    "completed_at",
    "failure_code",
    "failure_message",
    "failure_stage_code",
)
_STORED = (
    "id",
    "model_id",
    "org_id",
    "input",
    "client_ref",
    "batch_id",
    "callback_url",
    "metadata",
    "request_id",
    "created_at",
)
RUN_FIELDS: frozenset[str] = frozenset(_CONSTANTS) | frozenset(_DERIVED) | frozenset(_STORED)
"""Every top-level key of a rendered run."""
_CONSTANT_KEYS = frozenset(_CONSTANTS)
_DERIVED_KEYS = frozenset(_DERIVED)
_STORED_KEYS = frozenset(_STORED) - {"id"}
_STATUS_ONLY = frozenset({"status_code"})


def phase(created: float, duration: float, failed: bool, now: float) -> str:
    """Return the ``status_code`` at ``now`` of a run created at ``created``."""
    # ``created + duration`` is the exact expression of ``RunRecord.end`` and of the
    # settlement heap, so billing and status agree on the instant a run finishes.
    if now >= created + duration:
        return "failed" if failed else "succeeded"
    if now >= created + duration * _RUNNING_AT:
        return "running"
    return "dispatching" if now >= created + duration * _DISPATCH_AT else "queued"


@dataclass(slots=True, eq=False)
class RunRecord:
    """A stored run: what was asked, what was drawn, and when it happened.

    Attributes:
        seq: Insertion index, also the sort key of ``created_at``.
        id: The run id (a UUID string).
        model_id: UUID of the model.
        org_id: UUID of the emulated organization.
        request: The validated create body.
        request_id: ``X-Request-Id`` of the create.
        created: Emulated creation time.
        duration: Emulated seconds from creation to the terminal state.
        failure: ``(failure_code, failure_message)`` if the run ends failed.
        seed: Seed reported in the output.
        size: Size of every output image.
        cost: What a success bills.
        idempotency_key: The ``Idempotency-Key`` it was created with, if any.
        reported_cost: What reads show as ``cost`` instead of ``cost`` (a fault:
            ``"-0.004"``, ``"NaN"``, ``"1e12"``), or ``None`` for the truth.
        cost_delay: Emulated seconds after its end before reads show ``cost``.
        deliveries: Its callback deliveries, oldest first (``None`` before the first),
            kept here so that they are forgotten with the run.
        background: Made by another client of the organisation
            (``EmulatorConfig.background_runs``), not by a create we answered.
        batch_id: The batch that made it, if a batch create did.
    """

    seq: int
    id: str
    model_id: str
    org_id: str
    request: CreateRequest
    request_id: str
    created: float
    duration: float
    failure: tuple[str, str] | None
    seed: int
    size: Size
    cost: Decimal
    idempotency_key: str | None = None
    reported_cost: str | None = None
    cost_delay: float = 0.0
    deliveries: list[Delivery] | None = None
    background: bool = False
    batch_id: str | None = None

    @property
    def end(self) -> float:
        """Return the emulated time the run reaches its terminal state."""
        return self.created + self.duration

    @property
    def started(self) -> float:
        """Return the emulated time the run starts ``running`` (its ``started_at``)."""
        return self.created + self.duration * _RUNNING_AT

    @property
    def extension(self) -> str:
        """Return the file extension of the run's images."""
        return EXTENSIONS[self.request.output_format]

    def status(self, now: float) -> str:
        """Return ``status_code`` at emulated time ``now``."""
        return phase(self.created, self.duration, self.failure is not None, now)

    def file_path(self, index: int) -> str:
        """Return the unsigned path of output image ``index``."""
        return f"/files/{self.id}/{index}.{self.extension}"

    def _output(self, url_for: UrlFor) -> dict[str, Any]:
        width, height = self.size
        content_type = _CONTENT_TYPES[self.request.output_format]
        outputs = [
            {
                "url": url_for(self.file_path(index)),
                "type": "image",
                "width": width,
                "height": height,
                "content_type": content_type,
            }
            for index in range(self.request.num_images)
        ]
        return {
            "outputs": outputs,
            "seed": self.seed,
            "model_data": {"prompt": self.request.input["prompt"]},
            "nsfw_detected": False,
            "timing": {"inference_ms": round(self.duration * (1 - _RUNNING_AT) * 1000)},
        }

    def _cost_shown(self, now: float) -> str | None:
        if now < self.end + self.cost_delay:
            return None  # billed, not reported yet
        if self.reported_cost is None:
            return str(self.cost)
        return None if self.reported_cost == "missing" else self.reported_cost

    def _derived(self, now: float, url_for: UrlFor, output: bool = True) -> dict[str, Any]:
        status = self.status(now)
        done = status in ("succeeded", "failed")
        started = now >= self.created + self.duration * _RUNNING_AT
        failure = self.failure if done else None
        return {
            "status_code": status,
            "output": self._output(url_for) if output and status == "succeeded" else None,
            "duration_ms": round(self.duration * 1000) if done else None,
            "cost": (self._cost_shown(now) if failure is None else "0") if done else None,
            "started_at": EmulatedClock.iso(self.started) if started else None,
            "completed_at": EmulatedClock.iso(self.end) if done else None,
            "failure_code": failure[0] if failure else None,
            "failure_message": failure[1] if failure else None,
            "failure_stage_code": "execution" if failure else None,
        }

    def _stored(self) -> dict[str, Any]:
        request = self.request
        return {
            "id": self.id,
            "model_id": self.model_id,
            "org_id": self.org_id,
            "input": request.input,
            "client_ref": request.client_ref,
            "batch_id": self.batch_id,
            "callback_url": request.callback_url,
            "metadata": request.metadata,
            "request_id": self.request_id,
            "created_at": EmulatedClock.iso(self.created),
        }

    def to_api(
        self, now: float, url_for: UrlFor, fields: frozenset[str] | None = None
    ) -> dict[str, Any]:
        """Return the run as the API shows it at ``now``, optionally only ``fields`` and ``id``.

        A projection only computes the groups of fields it keeps (a poller asking for
        ``id,status_code`` signs no URL and formats no timestamp).
        """
        if fields is None:
            return {**self._stored(), **_CONSTANTS, **self._derived(now, url_for)}
        full: dict[str, Any] = {"id": self.id}
        if not fields.isdisjoint(_STORED_KEYS):
            full.update(self._stored())
        if not fields.isdisjoint(_CONSTANT_KEYS):
            full.update(_CONSTANTS)
        derived = fields & _DERIVED_KEYS
        if derived == _STATUS_ONLY:  # a poller's projection: no timestamp, no URL
            full["status_code"] = self.status(now)
        elif derived:
            full.update(self._derived(now, url_for, output="output" in derived))
        return {key: value for key, value in full.items() if key in fields or key == "id"}

    def field(self, name: str, now: float, url_for: UrlFor) -> Any:
        """Return one top-level field at ``now`` (``MISSING`` if the run has none)."""
        if name == "id":
            return self.id
        if name == "client_ref":
            return self.request.client_ref
        if name == "status_code":
            return self.status(now)
        if name == "created_at":  # a time window's filter: no need to build the stored view
            return EmulatedClock.iso(self.created)
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        if name in _DERIVED:
            return self._derived(now, url_for, output=name == "output")[name]
        return self._stored().get(name, MISSING)
