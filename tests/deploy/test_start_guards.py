"""The image's start command cannot start without its guards (issue 37): when `python -m
app.server` fails, the command stops there with its one-line error. It once sat inside `$(...)` on
uvicorn's line, where a failure expanded to nothing and uvicorn served without the read deadlines,
keep-alive and connection cap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.deploy.deployfiles import REPO, dockerfile_stages, instructions


def test_a_setting_the_guards_refuse_stops_the_image_command_before_uvicorn(tmp_path):
    (cmd,) = instructions(dockerfile_stages(), "api", "CMD")
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "GENSERVE_WEIGHTS_DIR": str(tmp_path), "GENSERVE_WORKERS": "1",
           "GENSERVE_HEADER_TIMEOUT_S": "inf"}
    result = subprocess.run(["/bin/sh", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode != 0
    # Only the guards' line: uvicorn never ran (it would log its start, or fail importing the app).
    assert result.stdout == "" and result.stderr.splitlines() == [
        "genserve: error: invalid settings: GENSERVE_HEADER_TIMEOUT_S='inf': Input should be a finite number"]
