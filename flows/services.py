"""Every service bookcounter starts in the background, in one list: ``bookcounter start|status|stop``.

Start, stop and list them through this module. How each one starts is its owner's business
(Label Studio's environment in ``annotator.labelstudio.server``, the ML backend in
``serving.ml_backend.server``, the counting server in ``serving.cli``, the UIs in
``flows.prefect_server`` and ``trainer.registry``); each runs with a pid file and a log under
``settings.run_dir`` (:class:`bookcounter.processes.Server`). A service is ours when its pid
file names a live process; stopping ends that process group and nothing else, so a server on
the same port that bookcounter did not start is reported and left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bookcounter.errors import UserError
from bookcounter.processes import Server, answers
from bookcounter.settings import Settings


@dataclass(frozen=True)
class Service:
    title: str
    url: str  # what a person opens
    health_url: str  # answers 2xx when the service is up
    process: Server
    start: Callable[[Settings], object]  # starts it unless it runs, and waits until it answers

    @property
    def name(self) -> str:
        """What ``bookcounter stop NAME`` takes; it also names the pid file and the log."""
        return self.process.name


@dataclass(frozen=True)
class ServiceState:
    service: Service
    pid: int | None  # of our live process
    answers: bool  # its health URL answers (whoever listens there)
    started_at: float | None

    @property
    def state(self) -> str:
        if self.pid is None:
            return "down"
        return "up" if self.answers else "starting"

    def note(self) -> str | None:
        """What a person should know beyond the state, or None."""
        s = self.service
        if self.pid is None and self.answers:
            return (
                f"{s.name}: {s.url} answers, but not a process bookcounter started ('bookcounter stop' leaves it alone)"
            )
        if self.pid is not None and not self.answers:
            return f"{s.name}: pid {self.pid} runs but {s.health_url} does not answer (starting, or stuck: see its log)"
        return None


def services(settings: Settings) -> list[Service]:
    """All of them, in the order ``stop`` stops them (the clients of Label Studio before it);
    :func:`start` starts them the other way round."""
    from annotator.labelstudio.server import health_url, server_process, start_server
    from flows.prefect_server import prefect_ui_server, start_ui, ui_url
    from serving.cli import serving_process, start_in_background
    from serving.ml_backend.server import backend_process, start_backend
    from trainer.registry import start_ui as start_mlflow_ui
    from trainer.registry import ui_server

    prefect = ui_url(settings)
    serve, backend, mlflow = settings.serve_url, settings.ml_backend_url, settings.mlflow_ui_url
    return [
        Service("counting server", serve, f"{serve}/healthz", serving_process(settings), start_in_background),
        Service("ML backend", backend, f"{backend}/health", backend_process(settings), start_backend),
        Service("Label Studio", settings.ls_url, health_url(settings), server_process(settings), start_server),
        Service("Prefect UI", prefect, f"{prefect}/api/health", prefect_ui_server(settings), start_ui),
        Service("MLflow UI", mlflow, mlflow, ui_server(settings), start_mlflow_ui),
    ]


def chosen(settings: Settings, names: Sequence[str] = ()) -> list[Service]:
    """The services named (all when none is), in :func:`services` order; an unknown name is an error."""
    every = services(settings)
    unknown = sorted(set(names) - {s.name for s in every})
    if unknown:
        raise UserError(f"no service named {', '.join(unknown)}; the services are {', '.join(s.name for s in every)}")
    return [s for s in every if not names or s.name in names]


def start(settings: Settings, names: Sequence[str] = ()) -> list[tuple[Service, bool]]:
    """Start the services named (all when none is), Label Studio before its clients; each with
    whether it was started now (False: it ran already)."""
    started = []
    for service in reversed(chosen(settings, names)):
        running = service.process.pid() is not None
        service.start(settings)
        started.append((service, not running))
    return started


def stop(settings: Settings, names: Sequence[str] = ()) -> list[tuple[Service, int | None]]:
    """Stop the services named (all when none is) that bookcounter started; each with the pid it
    stopped (None: not running). Only processes bookcounter started are stopped."""
    stopped = []
    for service in chosen(settings, names):
        pid = service.process.pid()
        service.process.stop()
        stopped.append((service, pid))
    return stopped


def state(service: Service) -> ServiceState:
    return ServiceState(service, service.process.pid(), answers(service.health_url), service.process.started_at())


def status_lines(settings: Settings, now: float | None = None) -> list[str]:
    """``bookcounter status``: one line a service (name, state, pid, uptime, URL, log), then notes."""
    now = time.time() if now is None else now
    states = [state(s) for s in services(settings)]
    rows = [("SERVICE", "NAME", "STATE", "PID", "UPTIME", "URL", "LOG")]
    for st in states:
        uptime = _duration(now - st.started_at) if st.started_at is not None else "-"
        s = st.service
        rows.append((s.title, s.name, st.state, str(st.pid or "-"), uptime, s.url, str(s.process.log_file)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows]
    return lines + [f"note: {n}" for n in (st.note() for st in states) if n]


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    d, h, m = s // 86400, s // 3600 % 24, s // 60 % 60
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s % 60:02d}s" if m else f"{s}s"
