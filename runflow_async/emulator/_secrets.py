"""Callback signing secrets: ``whsec_`` strings drawn from the seed, the newest one current.

https://docs.runflow.io/api-reference/webhooks/create-callback-signing-secret shows the
record and says the plain secret is shown once; the rotation guide says several
secrets verify in parallel during a cutover. Runflow signs with the current one, the
most recently created secret not yet disabled. The list and delete paths are
inferred (``GET /v1/callback-secrets``, ``DELETE /v1/callback-secrets/{id}``).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from runflow_async.emulator._clock import EmulatedClock

__all__ = ["MAX_LABEL", "SecretRecord", "SecretStore", "seeded_uuid"]

MAX_LABEL = 255
_PREFIX = "whsec_"
_KEY_PREFIX = len(_PREFIX) + 4  # "whsec_" and the first four hex digits


def seeded_uuid(rng: random.Random) -> str:
    """Return a version-4 UUID string drawn from ``rng``."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(slots=True, eq=False)
class SecretRecord:
    """One signing secret.

    Attributes:
        id: Its UUID.
        plain: The whole ``whsec_...`` string: the HMAC key.
        label: The caller's label.
        created: Emulated creation time.
        updated: Emulated time of the last change.
        disabled: Emulated time it was disabled, if it was.
        last_used: Emulated time it last signed a delivery, if ever.
    """

    id: str
    plain: str
    label: str
    created: float
    updated: float
    disabled: float | None = None
    last_used: float | None = None

    def to_api(self, org_id: str, current: bool) -> dict[str, Any]:
        """Return the record as the API lists it (without the plain secret)."""
        iso = EmulatedClock.iso
        return {
            "id": self.id,
            "key_prefix": self.plain[:_KEY_PREFIX],
            "is_current": current,
            "label": self.label,
            "org_id": org_id,
            "created_at": iso(self.created),
            "disabled_at": None if self.disabled is None else iso(self.disabled),
            "last_used_at": None if self.last_used is None else iso(self.last_used),
            "updated_at": iso(self.updated),
        }


class SecretStore:
    """Every signing secret of the emulated organization, oldest first."""

    __slots__ = ("_org_id", "_rng", "records")

    def __init__(self, org_id: str, seed: int) -> None:
        self._org_id = org_id
        self._rng = random.Random(f"runflow-emulator-secrets:{seed}")
        self.records: list[SecretRecord] = []

    def create(self, label: str, now: float) -> SecretRecord:
        """Draw a new secret at ``now``; it becomes the current one."""
        rng = self._rng
        record = SecretRecord(
            id=seeded_uuid(rng),
            plain=f"{_PREFIX}{rng.getrandbits(128):032x}",
            label=label,
            created=now,
            updated=now,
        )
        self.records.append(record)
        return record

    def current(self) -> SecretRecord | None:
        """Return the secret deliveries are signed with: the newest one still enabled."""
        return next((r for r in reversed(self.records) if r.disabled is None), None)

    def disable(self, secret_id: str, now: float) -> bool:
        """Disable a secret (again is a no-op); return whether it exists."""
        record = next((r for r in self.records if r.id == secret_id), None)
        if record is None:
            return False
        if record.disabled is None:
            record.disabled = record.updated = now
        return True

    def render(self, record: SecretRecord) -> dict[str, Any]:
        """Return ``record`` as the API shows it now."""
        return record.to_api(self._org_id, record is self.current())

    def listing(self) -> list[dict[str, Any]]:
        """Return every secret, oldest first, as the API lists them."""
        current = self.current()
        return [record.to_api(self._org_id, record is current) for record in self.records]
