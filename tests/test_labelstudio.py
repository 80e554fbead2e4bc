"""The Label Studio module against the real server: process, project, masks both ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from annotator.labelstudio.client import client
from annotator.labelstudio.errors import LabelStudioError
from annotator.labelstudio.mask_codec import brush_result, result_mask
from annotator.labelstudio.project import ensure_project
from annotator.labelstudio.server import server_env, server_status, start_server
from bookcounter.settings import Settings

pytestmark = pytest.mark.labelstudio


def test_server_runs_and_status_is_seen_from_another_process(labelstudio: Settings) -> None:
    st = server_status(labelstudio)
    assert st.running and st.healthy and st.pid is not None
    assert (labelstudio.run_dir / "labelstudio.pid").read_text().strip() == str(st.pid)
    # a second start is a no-op on the same process
    assert start_server(labelstudio).pid == st.pid
    env = {
        **os.environ,
        "BOOKCOUNTER_STATE_DIR": str(labelstudio.state_dir),
        "BOOKCOUNTER_LS_PORT": str(labelstudio.ls_port),
    }
    out = subprocess.run(
        [str(Path(sys.executable).parent / "bookcounter"), "labelstudio", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"pid {st.pid}" in out.stdout


def test_start_refuses_a_port_taken_by_another_server(labelstudio: Settings, tmp_path) -> None:
    other = Settings(state_dir=tmp_path / "var", ls_port=labelstudio.ls_port)
    with pytest.raises(LabelStudioError, match="taken"):
        start_server(other)
    assert not (other.run_dir / "labelstudio.pid").exists()


def test_project_is_created_once_with_the_mask_config(ls_settings: Settings) -> None:
    pid = ensure_project(ls_settings)
    assert ensure_project(ls_settings) == pid
    ls = client(ls_settings)
    same_title = [
        p for p in ls.projects.list(title=ls_settings.ls_project_title) if p.title == ls_settings.ls_project_title
    ]
    assert len(same_title) == 1
    config = ls.projects.get(id=pid).label_config
    assert '<BrushLabels name="mask" toName="image">' in config and "<PolygonLabels" in config


def test_brush_masks_round_trip_pixel_for_pixel() -> None:
    rng = np.random.default_rng(1)
    mask = np.zeros((37, 53), bool)
    mask[5:30, 10:20] = True
    mask |= rng.random(mask.shape) > 0.9  # ragged edges, isolated pixels
    back = result_mask(brush_result(mask, 0.7), 37, 53)
    assert back is not None and np.array_equal(back, mask)
    assert result_mask({"type": "keypointlabels", "value": {"x": 1, "y": 2}}, 37, 53) is None


def test_polygon_percent_coordinates_become_pixels() -> None:
    result = {"type": "polygonlabels", "value": {"points": [[10, 20], [50, 20], [50, 70], [10, 70]]}}
    mask = result_mask(result, 100, 200)  # 200 wide: x 20..100 px, y 20..70 px
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 20) <= 1 and abs(xs.max() - 100) <= 1
    assert abs(ys.min() - 20) <= 1 and abs(ys.max() - 70) <= 1


def test_postgresql_is_a_setting(tmp_path) -> None:
    env = server_env(Settings(state_dir=tmp_path, ls_database_url="postgresql://ls:s%40cret@db.local:5433/labels"))
    assert (env["DJANGO_DB"], env["POSTGRE_HOST"], env["POSTGRE_PORT"]) == ("default", "db.local", "5433")
    assert (env["POSTGRE_USER"], env["POSTGRE_PASSWORD"], env["POSTGRE_NAME"]) == ("ls", "s@cret", "labels")
    assert server_env(Settings(state_dir=tmp_path))["DJANGO_DB"] == "sqlite"
    with pytest.raises(ValidationError, match="postgresql://"):
        Settings(state_dir=tmp_path, ls_database_url="mysql://x@y/z")


def test_cli_collect_with_nothing_new_and_prelabel_without_inbox(ls_settings: Settings) -> None:
    env = {**os.environ, "COLUMNS": "250"}  # ls_settings' state dir, port and project title are in the environment
    exe = str(Path(sys.executable).parent / "bookcounter")
    out = subprocess.run([exe, "collect"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "no new dataset version" in out.stdout, out.stderr
    out = subprocess.run(
        [exe, "prelabel", "--inbox", str(ls_settings.state_dir / "missing")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1 and out.stderr.startswith("error: inbox") and "Traceback" not in out.stderr
