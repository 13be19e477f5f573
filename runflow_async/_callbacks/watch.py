"""``CallbackWatch``: one party's interest in one run's callback, settled once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from runflow_async._core.models import CallbackPayload

if TYPE_CHECKING:
    from runflow_async._callbacks.receiver import CallbackReceiver

__all__ = ["CallbackWatch"]


class CallbackWatch:
    """Interest in one run's callback, from :meth:`CallbackReceiver.watch`.

    Like an ``asyncio.Future`` it settles once: with the first valid delivery
    for the run, by :meth:`cancel`, or when the receiver closes.

    Attributes:
        run_id: The run being watched.
    """

    def __init__(self, run_id: str, receiver: CallbackReceiver) -> None:
        self.run_id = run_id
        self._receiver = receiver
        self._event = asyncio.Event()
        self._outcome: CallbackPayload | BaseException | None = None

    async def wait(self) -> CallbackPayload:
        """Wait for the run's callback; its ``run_status`` says how the run ended.

        Cancelling the waiting task leaves the watch in place: wait again, or
        :meth:`cancel` it.

        Raises:
            asyncio.CancelledError: The watch was cancelled with :meth:`cancel`.
            ClientClosedError: The receiver closed before the callback came.
        """
        await self._event.wait()
        if isinstance(self._outcome, CallbackPayload):
            return self._outcome
        raise self._outcome or asyncio.CancelledError()

    def done(self) -> bool:
        """Return whether the watch has settled (delivered, cancelled or closed)."""
        return self._event.is_set()

    def cancel(self) -> None:
        """Stop watching and free the slot; a no-op once settled.

        A later delivery for the run is buffered as if nobody had watched it.
        """
        if not self.done():
            self._receiver._forget(self)
            self._settle(None)

    def _settle(self, outcome: CallbackPayload | BaseException | None) -> None:
        self._outcome = outcome
        self._event.set()
