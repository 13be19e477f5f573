"""Asyncio SDK for Runflow's FLUX.2 [klein] 9B image API.

Everything public is importable from here; modules starting with ``_`` are private.
"""

from runflow_async._batch.batch import Batch
from runflow_async._batch.map import MapRun
from runflow_async._batch.observe import BatchEvent, BatchObserver, ProgressBarObserver
from runflow_async._batch.options import BatchOptions
from runflow_async._batch.outcomes import CostReport, ItemCost, Outcome, RunFuture
from runflow_async._callbacks.receiver import CallbackReceiver, CallbackWatch, ReceiverCounters
from runflow_async._client.client import RunflowClient
from runflow_async._core.assets import DEFAULT_MAX_DATA_URI_BYTES, Asset, AssetRefRefusedError
from runflow_async._core.config import PollPolicy, RetryPolicy, Timeouts
from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchRouteRefusedError,
    BudgetExceededError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    CreateOutcomeUnknownError,
    DownloadError,
    InsufficientCreditError,
    NotFoundError,
    NotSubmittedError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    RunAbandonedError,
    RunCanceledError,
    RunError,
    RunFailedError,
    RunflowError,
    RunTimeoutError,
    ServerError,
    ServiceUnavailableError,
    TLSVerificationError,
    UnprocessableEntityError,
    WebhookVerificationError,
)
from runflow_async._core.estimate import Estimate, ItemEstimate
from runflow_async._core.models import (
    TERMINAL_STATUSES,
    CallbackPayload,
    GenerationResult,
    ImageOutput,
    Run,
    RunOutput,
    RunPage,
    RunStatus,
)
from runflow_async._core.requests import CustomImageSize, EditRequest, GenerateRequest, RunRequest
from runflow_async._http.assets import MAX_UPLOAD_BYTES
from runflow_async._http.download import DownloadedFile
from runflow_async._http.retry import RetryEvent
from runflow_async._http.secrets import CallbackSecret
from runflow_async._imagesize import image_size_from_bytes, image_size_from_path
from runflow_async._pricing import EDIT_MODEL, GENERATE_MODEL, PRESET_SIZES, PricingPolicy
from runflow_async._version import __version__
from runflow_async._webhooks import REQUEST_ID_HEADER, SIGNATURE_HEADER, sign, verify_signature

__all__ = [
    "DEFAULT_MAX_DATA_URI_BYTES",
    "EDIT_MODEL",
    "GENERATE_MODEL",
    "MAX_UPLOAD_BYTES",
    "PRESET_SIZES",
    "REQUEST_ID_HEADER",
    "SIGNATURE_HEADER",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "Asset",
    "AssetRefRefusedError",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchEvent",
    "BatchObserver",
    "BatchOptions",
    "BatchRouteRefusedError",
    "BudgetExceededError",
    "CallbackPayload",
    "CallbackReceiver",
    "CallbackSecret",
    "CallbackWatch",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "CostReport",
    "CreateOutcomeUnknownError",
    "CustomImageSize",
    "DownloadError",
    "DownloadedFile",
    "EditRequest",
    "Estimate",
    "GenerateRequest",
    "GenerationResult",
    "ImageOutput",
    "InsufficientCreditError",
    "ItemCost",
    "ItemEstimate",
    "MapRun",
    "NotFoundError",
    "NotSubmittedError",
    "Outcome",
    "PermissionDeniedError",
    "PollPolicy",
    "PricingPolicy",
    "ProgressBarObserver",
    "RateLimitError",
    "ReceiverCounters",
    "RequestValidationError",
    "RetryEvent",
    "RetryPolicy",
    "Run",
    "RunAbandonedError",
    "RunCanceledError",
    "RunError",
    "RunFailedError",
    "RunFuture",
    "RunOutput",
    "RunPage",
    "RunRequest",
    "RunStatus",
    "RunTimeoutError",
    "RunflowClient",
    "RunflowError",
    "ServerError",
    "ServiceUnavailableError",
    "TLSVerificationError",
    "Timeouts",
    "UnprocessableEntityError",
    "WebhookVerificationError",
    "__version__",
    "image_size_from_bytes",
    "image_size_from_path",
    "sign",
    "verify_signature",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("runflow_async._"):
        _obj.__module__ = "runflow_async"
del _name, _obj
