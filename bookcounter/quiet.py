"""Keeping a library's ``print`` calls out of stdout and out of Prefect's flow-run log.

``contextlib.redirect_stdout`` is not enough inside a flow with ``log_prints=True``: Prefect
replaces ``builtins.print`` with one that logs at INFO whatever goes to ``sys.stdout``, the
redirected one included. :func:`quiet_prints` shadows ``print`` in the given modules only (e.g.
pycocotools' "creating index..." / "DONE (t=0.29s)"), so their lines go to this module's logger
at DEBUG and nothing else in the process is touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)
_lock = threading.Lock()
_depth: dict[str, int] = {}  # module name -> how many quiet_prints blocks shadow its print now


def _to_debug_log(*args: Any, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
    text = (sep if sep is not None else " ").join(map(str, args)).strip()
    if text:
        log.debug(text)


@contextmanager
def quiet_prints(*modules: ModuleType) -> Iterator[None]:
    """Within the block, ``print`` in ``modules`` logs at DEBUG instead of printing.

    Thread-safe and re-entrant: the modules' own ``print`` (the builtin) is back once the last
    block that shadows it ends. Usage::

        import pycocotools.coco, pycocotools.cocoeval
        with quiet_prints(pycocotools.coco, pycocotools.cocoeval):
            ...
    """
    with _lock:
        for module in modules:
            _depth[module.__name__] = _depth.get(module.__name__, 0) + 1
            module.print = _to_debug_log  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with _lock:
            for module in modules:
                _depth[module.__name__] -= 1
                if not _depth[module.__name__]:
                    del _depth[module.__name__], module.print  # type: ignore[attr-defined]
