"""The one module that sends Prefect events and asks Prefect what they caused.

Events go to the Prefect server that serves the deployments: ``PREFECT_API_URL`` when Prefect is
configured with one (a work-pool worker, ``bookcounter flows serve``), else the server that
``bookcounter ui prefect`` / ``flows serve`` start at ``settings.prefect_url``. A deployment
trigger on that server (see ``flows/deployments.py`` and ``prefect.yaml``) turns the event into a
flow run on its work pool, with the event as its cause in the Prefect UI.

Prefect's own ``emit_event`` queues the event for a background worker and, with no server
configured, starts a temporary one that runs no automations, so its caller cannot tell whether
anything will happen. :func:`emit` sends it over the server's events websocket and raises
:class:`PrefectUnavailable` when none answers, so a caller records an event as sent only once it is.
Prefect is imported inside the functions: importing this module changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bookcounter.errors import UserError
from bookcounter.settings import Settings

ANNOTATIONS_READY = "bookcounter.annotations.ready"  # enough new annotations, or "Start training"
RESOURCE_PREFIX = "bookcounter.label-studio.project"  # + ".<project id>": the resource of ANNOTATIONS_READY

# Label Studio's training job states (``/job_status``) for Prefect's state types
JOB_STATUS = {
    "SCHEDULED": "queued",
    "PENDING": "queued",
    "PAUSED": "queued",
    "RUNNING": "started",
    "CANCELLING": "started",
    "COMPLETED": "finished",
    "FAILED": "failed",
    "CRASHED": "failed",
    "CANCELLED": "failed",
}


class PrefectUnavailable(UserError):
    """No Prefect server answers, so an event would reach no trigger."""


def api_url(settings: Settings) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or f"{settings.prefect_url}/api"


def emit(settings: Settings, event: str, resource_id: str, payload: dict[str, Any], event_id: uuid.UUID) -> None:
    """Deliver one event to the Prefect server; :class:`PrefectUnavailable` when none answers.

    ``event_id`` names the event: the server's triggers ignore an id they have already seen
    (for 30 minutes), so sending the same occurrence twice starts nothing twice."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    url = api_url(settings)

    async def send() -> None:
        async with PrefectEventsClient(api_url=url) as client:
            await client.emit(
                Event(event=event, resource={"prefect.resource.id": resource_id}, payload=payload, id=event_id)
            )

    try:
        _run(send())
    except Exception as e:  # the websocket client raises whatever its transport raised
        raise PrefectUnavailable(
            f"no Prefect server answers at {url} ({type(e).__name__}: {e}); "
            "start it and the deployments with `bookcounter flows serve`"
        ) from None


def job_status(settings: Settings, event_id: str) -> str:
    """Label Studio's status of the flow run that event ``event_id`` caused: ``queued`` until
    Prefect made one, then ``started``/``finished``/``failed``; ``unknown`` if no such event."""
    from prefect.client.orchestration import PrefectClient
    from prefect.events.filters import EventFilter, EventIDFilter, EventNameFilter, EventRelatedFilter

    try:
        uuid.UUID(event_id)
    except ValueError:
        return "unknown"

    async def query() -> str:
        async with PrefectClient(url) as client:
            sent = await client.read_events(
                EventFilter(
                    id=EventIDFilter(id=[uuid.UUID(event_id)]), event=EventNameFilter(name=[ANNOTATIONS_READY])
                ),
                limit=1,
            )
            if not sent.events:
                return "unknown"
            done = await client.read_events(
                EventFilter(
                    event=EventNameFilter(name=["prefect.automation.action.executed"]),
                    related=EventRelatedFilter(id=[f"prefect.event.{event_id}"]),
                ),
                limit=10,
            )
            runs = [
                r.id.removeprefix("prefect.flow-run.")
                for e in done.events
                for r in e.related
                if r.id.startswith("prefect.flow-run.")
            ]
            if not runs:
                return "queued"
            run = await client.read_flow_run(uuid.UUID(runs[0]))
            return JOB_STATUS.get(run.state_type.value if run.state_type else "", "queued")

    url = api_url(settings)
    try:
        return _run(query())
    except Exception as e:
        raise PrefectUnavailable(f"cannot ask Prefect at {url} ({type(e).__name__}: {e})") from None


def _run(coro: Any) -> Any:
    """Run ``coro`` to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
