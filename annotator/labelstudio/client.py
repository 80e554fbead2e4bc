"""Talking to the Label Studio API: one retry policy, the SDK's own, and one-line failures.

Every request goes through label-studio-sdk's HTTP client, the SDK's methods and the few raw
requests alike (:func:`raw_requests`). It retries a refused or dropped connection and a
5xx/408/409/429 answer ``MAX_RETRIES`` times, waiting 1, 2, 4, 8, 16 s (±10 % jitter): about
31 s, which rides through a server restart. Nothing above it retries Label Studio again.
When a request still fails, :func:`api_errors` turns it into one line that says what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core import ApiError, HttpClient, SyncClientWrapper
from label_studio_sdk.core.http_client import INITIAL_RETRY_DELAY_SECONDS, MAX_RETRY_DELAY_SECONDS

from annotator.labelstudio.errors import LabelStudioError, LabelStudioUnavailable
from bookcounter.settings import Settings

MAX_RETRIES = 5
UNAVAILABLE = (None, 502, 503, 504)  # ApiError status codes that mean "not reachable", not "refused"


def retry_window_s() -> float:
    """How long the SDK keeps retrying one request before it gives up (without the jitter)."""
    return sum(min(INITIAL_RETRY_DELAY_SECONDS * 2**n, MAX_RETRY_DELAY_SECONDS) for n in range(MAX_RETRIES))


def client(settings: Settings, timeout: float = 60.0) -> LabelStudio:
    return LabelStudio(base_url=settings.ls_url, api_key=_token(settings), timeout=timeout, max_retries=MAX_RETRIES)


def _token(settings: Settings) -> str:
    return settings.ls_secrets.token.get_secret_value()


@contextmanager
def raw_requests(settings: Settings, timeout: float = 60.0) -> Iterator[HttpClient]:
    """The SDK's HTTP client (same token, same retries) for endpoints the SDK has no method for."""
    with httpx.Client(timeout=timeout, follow_redirects=True) as http:
        wrapper = SyncClientWrapper(
            base_url=settings.ls_url,
            api_key=_token(settings),
            timeout=timeout,
            max_retries=MAX_RETRIES,
            httpx_client=http,
        )
        yield wrapper.httpx_client


def checked(response: httpx.Response) -> httpx.Response:
    """``response`` if it is a 2xx, else the :class:`ApiError` the SDK's own methods raise."""
    if not response.is_success:
        raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text)
    return response


@contextmanager
def api_errors(settings: Settings, what: str) -> Iterator[None]:
    """Turn a request that failed (after the SDK's retries) into a one-line :class:`LabelStudioError`."""
    try:
        yield
    except (httpx.TransportError, ApiError) as e:
        if isinstance(e, httpx.TimeoutException):
            cause = f"{type(e).__name__}: no answer within the request's timeout"
        elif isinstance(e, httpx.TransportError) or e.status_code in UNAVAILABLE:
            name = type(e).__name__ if isinstance(e, httpx.TransportError) else f"HTTP {e.status_code}"
            cause = f"{name} after {MAX_RETRIES} retries over {retry_window_s():.0f} s"
        else:
            body = str(e.body).strip()
            detail = "" if body.startswith("<") else f" {body[:300]}"  # an HTML error page says nothing more
            if e.status_code == 401:
                detail += (
                    f"; the API token is refused: Label Studio's database was made with another token "
                    f"(set BOOKCOUNTER_LS_TOKEN to it, e.g. in .env; ours is in {settings.secrets_file})"
                )
            raise LabelStudioError(f"cannot {what}: Label Studio answered {e.status_code}{detail}") from None
        raise LabelStudioUnavailable(
            f"cannot {what}: Label Studio at {settings.ls_url} is not reachable ({cause}); "
            "start it with 'bookcounter labelstudio start'"
        ) from None
