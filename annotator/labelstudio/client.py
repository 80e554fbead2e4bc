"""The SDK client, and :func:`call`: every request that reaches the server goes through it.

:func:`call` retries with backoff while the server is down or restarting and then raises
:class:`LabelStudioUnavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from annotator.labelstudio.errors import LabelStudioError, LabelStudioUnavailable
from bookcounter.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # ~15 s in all: covers a server restart (~4 s)


def client(settings: Settings, timeout: float = 60.0) -> LabelStudio:
    return LabelStudio(base_url=settings.ls_url, api_key=settings.ls_token, timeout=timeout)


def http(settings: Settings, timeout: float = 60.0) -> httpx.Client:
    """For the endpoints the SDK has no method for (file import, media)."""
    return httpx.Client(
        base_url=settings.ls_url, headers={"Authorization": f"Token {settings.ls_token}"}, timeout=timeout
    )


def _transient(e: Exception) -> bool:
    if isinstance(e, httpx.TransportError):
        return True
    if isinstance(e, ApiError):
        return e.status_code is None or e.status_code in (502, 503, 504)
    if isinstance(e, httpx.HTTPStatusError):
        return e.response.status_code in (502, 503, 504)
    return False


def call(settings: Settings, what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (one or more API calls); retry with backoff while the server is unreachable.

    ``fn`` must be safe to repeat: callers that create things check first (see prelabel).
    """
    delays = RETRY_DELAYS_S
    for attempt, delay in enumerate((*delays, None)):
        try:
            return fn()
        except Exception as e:
            if not _transient(e):
                if isinstance(e, ApiError):
                    raise LabelStudioError(f"Label Studio refused to {what}: {e.status_code} {str(e.body)[:300]}") from None
                raise
            if delay is None:
                raise LabelStudioUnavailable(
                    f"Label Studio at {settings.ls_url} is not reachable (tried {attempt + 1} times over "
                    f"{sum(delays):.0f} s to {what}); start it with 'bookcounter labelstudio start'"
                ) from None
            log.warning("Label Studio unreachable (%s); retrying to %s in %.1f s", type(e).__name__, what, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
