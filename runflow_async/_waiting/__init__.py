"""Noticing finished runs for many runs at once: the shared list poller, bulk cost lookups."""
