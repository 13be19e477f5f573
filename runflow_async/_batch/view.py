"""What :class:`Batch` and ``map`` both show about the runs their engine created."""

from __future__ import annotations

from decimal import Decimal

from runflow_async._batch.engine import Engine

__all__ = ["EngineView"]


class EngineView:
    """Read-only properties over the engine's :meth:`~Engine.snapshot`."""

    _engine: Engine

    @property
    def billed_usd(self) -> Decimal:
        """What the API billed so far."""
        return self._engine.snapshot().billed_usd

    @property
    def unfinished_run_ids(self) -> list[str]:
        """Runs created but not seen to finish (abandoned or timed out): collect them later."""
        unfinished = self._engine.snapshot().unfinished
        return [unfinished[i] for i in sorted(unfinished)]

    @property
    def uncertain_client_refs(self) -> list[str]:
        """``client_ref`` of creates whose outcome is unknown; look them up before resubmitting."""
        return list(self._engine.snapshot().uncertain.values())

    @property
    def stop_reason(self) -> str | None:
        """Why submitting stopped (``budget``, ``insufficient_credit``, ``cancelled``...)."""
        return self._engine.stop_reason
