"""Asyncio SDK for Runflow's FLUX.2 [klein] 9B image API."""

from runflow_async._version import __version__

__all__ = ["__version__"]
