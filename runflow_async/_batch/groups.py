"""Ending a task group that an object entered by hand, without wrapping the caller's error."""

from __future__ import annotations

import anyio
from anyio.abc import TaskGroup

__all__ = ["exit_group"]


async def exit_group(tg: TaskGroup, exc: BaseException | None) -> None:
    """Exit ``tg`` while ``exc`` (if any) leaves the caller's block.

    A cancellation is passed on, so that every cancel scope sees it and the one
    that caused it swallows it. Any other exception is kept from the group (an
    anyio group would wrap it in an ``ExceptionGroup``): it leaves as itself.
    """
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        await tg.__aexit__(type(exc), exc, exc.__traceback__)
    else:
        await tg.__aexit__(None, None, None)
