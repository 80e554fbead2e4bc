"""pycocotools' prints stay out of stdout and out of a Prefect flow's log (bookcounter.quiet)."""

from __future__ import annotations

import logging

import pycocotools.coco
import pytest

from bookcounter.quiet import quiet_prints


def index_a_tiny_coco() -> None:
    coco = pycocotools.coco.COCO()  # no file: prints nothing itself
    coco.dataset = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "book"}]}
    coco.createIndex()  # prints "creating index..." and "index created!"


def test_pycocotools_prints_without_it(capsys: pytest.CaptureFixture[str]) -> None:
    index_a_tiny_coco()
    assert "creating index..." in capsys.readouterr().out  # what the guard below keeps out


def test_its_prints_go_to_the_debug_log_and_print_is_back_after(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="bookcounter.quiet"), quiet_prints(pycocotools.coco):
        with quiet_prints(pycocotools.coco):  # nested: the outer block still shadows it after
            index_a_tiny_coco()
        index_a_tiny_coco()
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records].count("creating index...") == 2
    assert "print" not in vars(pycocotools.coco)
    index_a_tiny_coco()
    assert "creating index..." in capsys.readouterr().out


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_inside_a_flow_that_logs_prints_they_stay_out_of_its_log(settings) -> None:
    from flows.prefect_server import configure_prefect

    configure_prefect(settings)
    from prefect import flow

    @flow(log_prints=True)
    def evaluate() -> None:
        print("a line of our own")
        with quiet_prints(pycocotools.coco):
            index_a_tiny_coco()

    run_log = logging.getLogger("prefect.flow_runs")  # where log_prints sends prints (it does not propagate)
    collect, level = Collect(), run_log.level
    run_log.addHandler(collect)
    run_log.setLevel(logging.INFO)  # the tests run Prefect at WARNING (conftest)
    try:
        evaluate()
    finally:
        run_log.removeHandler(collect)
        run_log.setLevel(level)
    infos = collect.lines
    assert "a line of our own" in infos  # prints are logged in this flow...
    assert not any("creating index" in m or "index created" in m for m in infos)  # ...but not these
