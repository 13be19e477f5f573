"""How long a new run takes to show in the run list, learned from the server itself.

After a create that may have reached the server (a timeout, a dropped
connection, a 5xx), the only way to know whether it made a run is to look it
up by ``client_ref`` in ``GET /v1/runs``. An empty answer proves nothing at
first: list indexes lag behind creates, and some servers store a run seconds
after they stopped answering (after the client's read timeout). So the client
looks again, at growing spacing (``lookup_interval``, doubling), until a
*visibility window* has passed since the attempt was given up (the server
received it at some time between sending and then), and only then may it
send the create again (with the same ``Idempotency-Key``).

The window is ``clamp(2 x largest, visibility_floor, visibility_cap)``
(:class:`~runflow_async.RetryPolicy`), where ``largest`` is the longest time,
from sending a create to the first answer that showed its run, that this
client has seen: ambiguous creates later found by a lookup, and answered
creates later seen by the batch list poller. Both are upper bounds of the
server's true delay (lookups are spaced; the poller asks only about ended runs
once verified, so its sightings include the run's duration), which only makes
the window safer. The assumption: a run that has not appeared within twice
the longest delay ever observed, and at least ``visibility_floor``, was not
made. Where that cannot be checked (no form of listing works, the lookups
fail at the end) the create ends unknown instead.

How a run can be looked up at all is learned too (:class:`LookupForms`, kept
here per client, used by :mod:`._http.lookup`): by the ``client_ref:`` filter,
else by the documented ``created_at>=`` filter, else by the newest runs
first; each form is dropped once the server refuses or contradicts it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from runflow_async._core.clock import Clock
from runflow_async._core.config import RetryPolicy

if TYPE_CHECKING:
    import anyio

__all__ = ["FORMS", "LookupFailed", "LookupForms", "Visibility", "search"]

logger = logging.getLogger("runflow_async")

_T = TypeVar("_T")
_REMEMBERED = 10_000  # answered creates whose first sighting is awaited


class LookupFailed(Exception):
    """One lookup could not be made (a transient failure); a later one may be."""


FORMS = ("client_ref", "created_at", "newest")
"""The ways to look a run up, in order of preference (:mod:`._http.lookup`)."""


class LookupForms:
    """What one client learned of how the server lets it look runs up.

    Attributes:
        refused: Each form the server refused or contradicted, with why.
        offset: A lower bound of the server's time (Unix seconds) minus the
            client's clock (:meth:`observe`), ``None`` before any run was listed.
        queue: Lookups waiting for the next shared page walk.
        walking: Whether a walk is under way (its end is ``walked``).
        walked: Set when the walk under way ends.
    """

    __slots__ = ("offset", "queue", "refused", "walked", "walking")

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}
        self.offset: float | None = None
        self.queue: list[object] = []
        self.walking = False
        self.walked: anyio.Event | None = None

    def usable(self) -> list[str]:
        """The forms not yet refused, the preferred one first."""
        return [form for form in FORMS if form not in self.refused]

    def refuse(self, form: str, why: str) -> None:
        """The server refused or contradicted ``form``: it is not tried again."""
        if form not in self.refused:
            logger.warning("Lookups by %s do not work on this server (%s).", form, why)
            self.refused[form] = why

    def observe(self, created_at: float, now: float) -> None:
        """A run created at ``created_at`` (Unix seconds) was listed by ``now`` (clock seconds).

        It was created before the answer came, so ``created_at - now`` is at
        most the true offset: the largest seen is the best safe bound.
        """
        seen = created_at - now
        if self.offset is None or seen > self.offset:
            self.offset = seen


class Visibility:
    """The learned visibility window of one client (module doc).

    Args:
        policy: Gives ``visibility_floor`` and ``visibility_cap``.
    """

    __slots__ = ("_cap", "_floor", "_sent", "forms", "largest")

    def __init__(self, policy: RetryPolicy) -> None:
        self.forms = LookupForms()
        self._floor = policy.visibility_floor
        self._cap = policy.visibility_cap
        self._sent: dict[str, float] = {}
        self.largest = 0.0

    @property
    def window(self) -> float:
        """Seconds after sending a create before an empty lookup counts as absence."""
        return min(self._cap, max(self._floor, 2 * self.largest))

    def observe(self, seconds: float) -> None:
        """A run appeared in the list ``seconds`` after its create was sent."""
        if seconds > self.largest:
            self.largest = seconds
            logger.debug("Runs appear in lists within %.3fs; window %.3fs.", seconds, self.window)

    def created(self, run_id: str, sent_at: float) -> None:
        """A create sent at ``sent_at`` (clock seconds) was answered with ``run_id``."""
        if len(self._sent) >= _REMEMBERED:
            del self._sent[next(iter(self._sent))]  # the oldest
        self._sent[run_id] = sent_at

    def sent_at(self, run_id: str) -> float | None:
        """When the create answered with ``run_id`` was sent, while it is not yet sighted."""
        return self._sent.get(run_id)

    def sighted(self, run_id: str, now: float) -> None:
        """A list answer at ``now`` showed ``run_id``; the first sighting is measured."""
        sent_at = self._sent.pop(run_id, None)
        if sent_at is not None:
            self.observe(now - sent_at)


async def search(
    find: Callable[[], Awaitable[_T | None]],
    *,
    clock: Clock,
    visibility: Visibility,
    sent_at: float,
    failed_at: float,
    interval: float,
    learn: bool = True,
) -> _T | None:
    """Look up what was sent at ``sent_at`` until the window has passed; ``None`` if never seen.

    The window counts from ``failed_at``, when the attempt was given up: the
    server received it at some time between the two (a request may wait for
    a connection first), so the lookups cover the window after any receipt.
    A sighting is measured from ``sent_at``, which can only overstate a delay.
    The first lookup is made at once, the next ``interval`` later, each later
    gap doubling, the last one once the window has passed: only that one
    proves absence, so a :class:`LookupFailed` is tolerated before it and
    raised from it. With a clock scaled to 0 the gaps are counted, not waited.
    ``learn=False`` measures nothing: for a ``sent_at`` that is only a bound
    from above (a create a process before this one sent), a sighting would
    understate the delay.

    Raises:
        LookupFailed: The last lookup failed.
    """
    window = visibility.window
    elapsed = clock.now() - failed_at
    gap = interval
    while True:
        last = elapsed >= window
        try:
            found = await find()
        except LookupFailed as exc:
            if last:
                raise
            logger.info("A lookup failed (%s); looking again.", exc)
            found = None
        if found is not None:
            if learn:
                visibility.observe(clock.now() - sent_at)
            return found
        if last:
            return None
        step = min(gap, window - elapsed)
        await clock.sleep(step)
        elapsed = max(elapsed + step, clock.now() - failed_at)
        gap *= 2
