"""What starts the loop: enough new annotations, or "Start training" in Label Studio.

Both end in the Prefect event ``bookcounter.annotations.ready`` (:mod:`annotator.events`); the
``loop`` deployment's trigger turns it into a flow run on its work pool. Nothing here starts a
process.

**One count.** :func:`annotator.collect.pending_annotations`: annotated tasks of the project that
the newest dataset version does not hold. The ML backend checks it on every Label Studio
annotation webhook (at once), the ``watch-annotations`` flow every minute (a backstop for missed
webhooks); both call :func:`check_annotations`.

**Exactly one event per crossing.** Crossing ``k`` is the count reaching ``k * N``
(``N = settings.retrain_every_n_annotations``) relative to one dataset version. Under an
exclusive lock, :func:`check_annotations` counts, compares with the last crossing sent (a small
state file next to the lock), and sends the event only for a crossing not sent yet; it records
the crossing once the event was delivered. So whichever of the webhook and the watcher comes
first sends it and the other sees it was sent, in any process on this state dir. The event's id
is derived from the crossing too, so a resend after a crash between delivery and record is
dropped by Prefect's triggers (they ignore an event id seen in the last 30 minutes). When a
loop's collect makes a new dataset version the count starts again from it. A jump past several
multiples of ``N`` at once is one crossing (one loop collects them all).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from annotator import events
from annotator.collect import pending_annotations
from bookcounter.locks import file_lock
from bookcounter.settings import Settings

log = logging.getLogger(__name__)
EVENT_NAMESPACE = uuid.UUID("2f0c6f0e-3c55-4d8a-9f59-6d4f3b0a1c17")  # event ids of crossings: uuid5 in it


@dataclass(frozen=True)
class Crossing:
    project_id: int
    relative_to: str | None  # the dataset version the count is relative to
    index: int  # the count reached index * threshold
    pending: int
    threshold: int

    @property
    def event_id(self) -> uuid.UUID:
        return uuid.uuid5(EVENT_NAMESPACE, f"{self.project_id}/{self.relative_to}/{self.index}")


def state_file(settings: Settings) -> Path:
    """The last crossing sent (JSON), next to its lock."""
    return settings.run_dir / "annotations-ready.json"


def check_annotations(settings: Settings, source: str) -> tuple[int, Crossing | None]:
    """Count the pending annotations; send the event when a crossing not sent before is reached.

    Returns the count (0 when the trigger is off) and the crossing sent now (None when none was). Raises
    :class:`annotator.events.PrefectUnavailable` (nothing recorded) when no Prefect server answers.
    """
    threshold = settings.retrain_every_n_annotations
    if threshold <= 0:  # the automatic trigger is off (the demo drives the loop itself)
        return 0, None
    path = state_file(settings)
    with file_lock(path.with_suffix(".lock")):
        pending = pending_annotations(settings)
        if pending.count < threshold:
            return pending.count, None
        crossing = Crossing(
            pending.project_id, pending.relative_to, pending.count // threshold, pending.count, threshold
        )
        last = _last_sent(path)
        if (
            last is not None
            and (last.project_id, last.relative_to) == (crossing.project_id, crossing.relative_to)
            and last.index >= crossing.index
        ):
            return pending.count, None
        events.emit(
            settings,
            events.ANNOTATIONS_READY,
            _resource(crossing.project_id),
            {"source": source, **asdict(crossing)},
            crossing.event_id,
        )
        path.write_text(json.dumps(asdict(crossing)))
    log.info(
        "%s: %d new annotation(s) (threshold %d, since %s): sent %s",
        source,
        crossing.pending,
        threshold,
        crossing.relative_to or "no dataset version",
        events.ANNOTATIONS_READY,
    )
    return pending.count, crossing


def request_training(settings: Settings, project_id: int | None, source: str) -> uuid.UUID:
    """ "Start training": send the event for one loop run now; returns the event id (the job id)."""
    event_id = uuid.uuid4()
    events.emit(settings, events.ANNOTATIONS_READY, _resource(project_id), {"source": source}, event_id)
    log.info("%s: sent %s (event %s)", source, events.ANNOTATIONS_READY, event_id)
    return event_id


def _resource(project_id: int | None) -> str:
    return f"{events.RESOURCE_PREFIX}.{project_id if project_id is not None else 'unknown'}"


def _last_sent(path: Path) -> Crossing | None:
    try:
        return Crossing(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
