"""Every numeric option of every command is range-checked before any work: a one-line usage error, exit 2."""

from __future__ import annotations

import math

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prumux_deploy import options

from conftest import commands, run_cli

RANGE_TYPES = (click.IntRange, click.FloatRange)


def numeric_options():
    for path, cmd in commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and (
                    isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType))
                    or param.callback is not None and "number_list" in param.callback.__qualname__):
                yield path, cmd, param


def required_args(cmd, skip):
    """Dummy values for every required argument and option, so only the option under test can fail."""
    args = []
    for param in cmd.params:
        if param is skip:
            continue
        if isinstance(param, click.Argument):
            args.append("x")
        elif param.required:
            args += [param.opts[0], "x"]
    return args


def out_of_range(param_type) -> list[str]:
    """Values just outside the range (and non-finite floats), as a user would type them."""
    values = []
    if isinstance(param_type, click.IntRange):
        if param_type.min is not None:
            values.append(str(param_type.min - 1))
        if param_type.max is not None:
            values.append(str(param_type.max + 1))
    else:
        lo, hi = param_type.min, param_type.max
        if lo is not None:
            values.append(repr(lo if param_type.min_open else lo - 1e-3))
        if hi is not None:
            values.append(repr(hi if param_type.max_open else hi + 1e-3))
        values += ["nan", "inf", "-inf"]
    return values


def test_every_numeric_option_has_a_range():
    unbounded = [f"{' '.join(path)} {param.opts[0]}" for path, cmd, param in numeric_options()
                 if param.callback is None and not isinstance(param.type, RANGE_TYPES)]
    assert unbounded == []
    floats = [f"{' '.join(path)} {param.opts[0]}" for path, cmd, param in numeric_options()
              if isinstance(param.type, click.FloatRange) and not isinstance(param.type, options.FiniteFloatRange)]
    assert floats == []  # every float refuses NaN and infinities too
    assert len(list(numeric_options())) > 60


@pytest.mark.parametrize("path, cmd, param", list(numeric_options()),
                         ids=lambda v: v if isinstance(v, str) else getattr(v, "name", None) or " ".join(v))
def test_out_of_range_values_are_one_line_usage_errors(path, cmd, param):
    values = out_of_range(param.type) if param.callback is None else ["0,-1", "nan", "1,x"]
    assert values
    for value in values:
        result = run_cli(*path, *required_args(cmd, param), param.opts[0], value)
        assert result.exit_code == 2, (path, param.opts[0], value, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: Invalid value for"), (path, value, result.output)
        assert param.opts[0] in lines[0] and f"see 'main {' '.join(path)} --help'" in lines[0]
        assert "Traceback" not in result.output and "unexpected" not in result.output


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(list(numeric_options())), st.data())
def test_any_value_outside_an_option_range_is_refused(option, data):
    """Property: for any value outside an option's range (drawn, not just the boundary), one line, exit 2."""
    path, cmd, param = option
    if param.callback is not None:
        return
    t = param.type
    if isinstance(t, click.IntRange):
        value = data.draw(st.integers(max_value=t.min - 1) if t.min is not None else st.integers(min_value=t.max + 1))
    else:
        below = st.floats(max_value=t.min, exclude_max=not t.min_open, allow_nan=False) if t.min is not None else None
        above = st.floats(min_value=t.max, exclude_min=not t.max_open, allow_nan=False) if t.max is not None else None
        value = data.draw(st.one_of(*[s for s in (below, above, st.just(math.nan)) if s is not None]))
    result = run_cli(*path, *required_args(cmd, param), param.opts[0], value)
    assert result.exit_code == 2 and result.output.startswith("error: Invalid value for"), (value, result.output)
    assert len(result.output.strip().splitlines()) == 1
