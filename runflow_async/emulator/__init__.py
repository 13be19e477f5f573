"""A local Runflow API server for the FLUX.2 [klein] 9B models.

An independent implementation of the documented API contract (runs, listing with the
``q`` filter, presigned output images, asset uploads, billing, idempotency, error
envelopes) with a scaled clock and injectable faults. Presigned URLs refuse an
``Authorization`` header and count it (``credentials_on_presigned``), so a test can
prove the API key never leaves for storage. Use it to test pipelines offline::

    async with Emulator(time_scale=0.001, median_duration=2.0, seed=7) as emu:
        ...  # point a client at emu.url; assert on emu.counters

For load tests it can rate-limit creates like an organization's quota
(``max_in_flight_runs``, ``create_rate_per_second``), forget old finished runs to
stay small (``retain_runs``), and report when each run ended, when a client
first saw it ended and how many requests named it (``Emulator.report()``,
``GET /_emulator/report``).

Runs created with a ``callback_url`` get a signed POST when they end (3 attempts,
1 s then 2 s apart), with delivery history, redelivery, signing secrets
(``POST /v1/callback-secrets``) and callback faults (``emu.faults.next("callback",
Fault.duplicate())``, ``EmulatorConfig.callback_faults``), and payloads whose
``output`` is null (``EmulatorConfig.callback_null_output_rate``).

Lists can be as strict as a server that only knows the documented filters
(``list_filters="no-id"``) or none (``"none"``), and the organisation can hold
another client's runs (``background_runs``), listed like ours and counted apart,
with list counters by filter kind, pages and background items.

Batches (``POST /v1/models/{model}/batches``, ``GET /v1/batches/{id}``, its
``items`` and ``callback``) make ordinary runs carrying ``batch_id``; the body
shape and which models take batches are switches (``batch_body``,
``batch_models``), and every create fault hits the batch create route too.

Random faults are seeded draws per request (``EmulatorConfig.faults``), each kind
optionally confined to some routes (``FaultRates.only_on``: say, server errors on
status reads only). Credit runs out with 402 ``INSUFFICIENT_CREDIT`` and can be
topped up while running (``Emulator.set_credit``, ``POST /_emulator/credit``).

Run it standalone with ``runflow-async emulator --port 8787`` (``--help`` lists
the limits and the fault flags, e.g. ``--rate-5xx 0.05 --fault-only
5xx=get_run,list_runs``); ``--port 0`` picks a free port and prints the URL.
"""

from runflow_async.emulator._config import CallbackFaults, EmulatorConfig, FaultRates
from runflow_async.emulator._counters import EmulatorCounters
from runflow_async.emulator._faults import Fault, FaultScript
from runflow_async.emulator._server import Emulator, serve

__all__ = [
    "CallbackFaults",
    "Emulator",
    "EmulatorConfig",
    "EmulatorCounters",
    "Fault",
    "FaultRates",
    "FaultScript",
    "serve",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
