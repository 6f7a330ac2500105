"""Settings that cannot break the service (issue 37): every number finite and bounded, an empty
admin token refused, and a bad value stops start-up with one line naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys
import typing

import annotated_types
import pytest

from app.config import Settings, SettingsError, load_settings
from tests.conftest import REPO

NUMERIC = [name for name, field in Settings.model_fields.items()
           if {int, float} & {field.annotation, *typing.get_args(field.annotation)}]


def test_every_numeric_setting_has_an_upper_bound():
    """A setting without one lets a value through that breaks the service later (max_n, max_steps
    and threads had none); a new setting must declare its bound too."""
    assert {"threads", "max_n", "max_steps", "batch_wait_ms", "request_timeout_s"} <= set(NUMERIC), NUMERIC
    for name in NUMERIC:
        metadata = Settings.model_fields[name].metadata
        bounds = [m for m in metadata if isinstance(m, (annotated_types.Le, annotated_types.Lt))]
        assert bounds, f"{name} has no upper bound"


@pytest.mark.parametrize("name", NUMERIC)
def test_a_number_past_its_bound_stops_start_up_naming_its_variable(name, monkeypatch):
    variable = f"GENSERVE_{name.upper()}"
    for value in ("1e300", "99999999999", "-1"):
        monkeypatch.setenv(variable, value)
        with pytest.raises(SettingsError, match=f"^invalid settings: {variable}='{value}': "):
            load_settings()


@pytest.mark.parametrize("name", [n for n in NUMERIC if float in typing.get_args(Settings.model_fields[n].annotation)
                                  or Settings.model_fields[n].annotation is float])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_a_float_setting_must_be_finite(name, value, monkeypatch):
    """GENSERVE_BATCH_WAIT_MS=inf once killed the worker at its first batched request, and
    GENSERVE_REQUEST_TIMEOUT_S=inf made the container start without its guards."""
    monkeypatch.setenv(f"GENSERVE_{name.upper()}", value)
    with pytest.raises(SettingsError, match=f"GENSERVE_{name.upper()}='{value}': Input should be a finite number"):
        load_settings()


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_admin_token_is_refused_and_not_echoed(token, monkeypatch):
    """GENSERVE_ADMIN_TOKEN="" once turned admin on with every call answered 401."""
    monkeypatch.setenv("GENSERVE_ADMIN_TOKEN", token)
    with pytest.raises(SettingsError, match=r"^invalid settings: GENSERVE_ADMIN_TOKEN: .*is empty"):
        load_settings()
    monkeypatch.setenv("GENSERVE_ADMIN_TOKEN", "s3cret")
    assert load_settings().admin_token.get_secret_value() == "s3cret"


def test_the_defaults_are_within_their_bounds():
    assert load_settings() == Settings()


@pytest.mark.parametrize("command, status", [(["-m", "app.server"], 1), (["-m", "app.cli", "serve"], 2)])
def test_a_bad_setting_stops_the_commands_with_one_line(command, status, tmp_path):
    """`python -m app.server` (the container's guards) and `genserve serve`: a one-line error
    naming the variable and a failing status, no traceback, nothing served."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENSERVE_WEIGHTS_DIR": str(tmp_path),
           "GENSERVE_BATCH_WAIT_MS": "inf"}
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == status and result.stdout == "", result
    [line] = result.stderr.splitlines()
    assert "error:" in line and "batch_wait_ms" in line.lower() and "finite" in line, line
