"""Fault injection for the kill/rerun tests: a process started with this folder on PYTHONPATH and
``BOOKCOUNTER_KILLPOINT=module:qualname`` stops, for good, right after the ``BOOKCOUNTER_KILLPOINT_AFTER``-th
call (default 1) of that function returns, having written its pid to ``BOOKCOUNTER_KILLPOINT_MARK``.
The test waits for that file, then SIGKILLs the process group: the kill lands at a known point of
the real code (nothing is replaced; the function ran). Without the variable this file does nothing.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
import threading

_TARGET = os.environ.get("BOOKCOUNTER_KILLPOINT")


def _install(module_name: str, qualname: str, nth: int, mark: str) -> None:
    calls = 0

    def patch(module) -> None:
        owner = module
        *path, name = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        @functools.wraps(original)
        def stop_after(*args, **kwargs):
            nonlocal calls
            result = original(*args, **kwargs)
            calls += 1
            if calls == nth:
                with open(mark, "w") as f:
                    f.write(str(os.getpid()))
                threading.Event().wait()  # until killed
            return result

        setattr(owner, name, stop_after)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != module_name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            exec_module = spec.loader.exec_module

            def exec_and_patch(module) -> None:
                exec_module(module)
                patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, Finder())


if _TARGET:
    _module, _qualname = _TARGET.split(":")
    _install(
        _module,
        _qualname,
        int(os.environ.get("BOOKCOUNTER_KILLPOINT_AFTER", "1")),
        os.environ["BOOKCOUNTER_KILLPOINT_MARK"],
    )
