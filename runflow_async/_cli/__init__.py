"""The runflow-async command: parses, prints, maps errors to exit codes."""

from runflow_async._cli.main import main

__all__ = ["main"]
