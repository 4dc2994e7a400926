"""Ranges by construction: every numeric option of every script declares its range, and a value just outside it is
refused in one line before anything runs.

The walker reads the fields of all five Configs (and of RunConfig, which they extend), so an option added to any
of them without a range fails here, and so does a range that parse_config does not enforce. Everything runs
in-process (parse_config through run_main, as `__main__` does): a refusal happens before any data loads, so there
is nothing a real process would add here; tests/scripts/test_probes.py runs real processes.
"""
import dataclasses
import importlib
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

import pytest

from common.cli import RunConfig, check_ranges, is_numeric_field, parse_config, run_main, unranged_numeric_fields

SCRIPTS = ["01_nerf", "02_mipnerf", "03_mipnerf360", "04_hashnerf", "05_instant_neus"]
MODULES = {name: importlib.import_module(name) for name in SCRIPTS}


def _ranged_fields(config_cls):
    """(field, its range metadata) for every numeric command-line field of config_cls."""
    from common.cli import _range_of

    hints = typing.get_type_hints(config_cls)
    return [(f, hints[f.name], _range_of(config_cls, f)) for f in dataclasses.fields(config_cls)
            if f.init and f.metadata.get("cli", True) and is_numeric_field(hints[f.name])]


def _scalar_type(tp):
    """int or float: the element type of a numeric annotation (Optional[int] -> int, tuple[int, ...] -> int)."""
    while typing.get_args(tp) and tp not in (int, float):
        tp = next(a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis)
    return tp


def _is_list(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return typing.get_origin(tp) in (list, tuple) or any(typing.get_origin(a) in (list, tuple) for a in args)


def _valid_value(scalar, bounds):
    """A number inside the bounds (the smallest one for a lower bound)."""
    if "min" in bounds:
        value = bounds["min"]
    elif "above" in bounds:
        value = bounds["above"] + 1 if scalar is int else math.nextafter(bounds["above"], math.inf)
    elif "max" in bounds:
        value = bounds["max"]
    elif "below" in bounds:
        value = bounds["below"] - 1 if scalar is int else math.nextafter(bounds["below"], -math.inf)
    else:
        value = 0
    step = bounds.get("multiple_of")
    if step:
        value = math.ceil(value / step) * step
    return scalar(value)


def _outside_values(scalar, bounds) -> list:
    """Numbers just outside the bounds: the nearest one past each bound, a non-multiple, NaN and Infinity."""
    values = []
    if "min" in bounds:
        values.append(bounds["min"] - 1 if scalar is int else math.nextafter(bounds["min"], -math.inf))
    if "max" in bounds:
        values.append(bounds["max"] + 1 if scalar is int else math.nextafter(bounds["max"], math.inf))
    for key in ("above", "below"):
        if key in bounds:
            values.append(bounds[key])
    if bounds.get("multiple_of", 1) != 1:
        values.append(_valid_value(scalar, bounds) + 1)
    if scalar is float:
        values += [math.nan, math.inf]
    return [scalar(v) if scalar is int else v for v in values]


def _cases() -> list:
    return [pytest.param(script, f.name, id=f"{script}--{f.name}") for script in SCRIPTS
            for f, tp, bounds in _ranged_fields(MODULES[script].Config) if bounds]


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err  # exactly one line: no usage block, no traceback
    return lines[0]


def _refused(script, argv, capsys) -> str:
    """The one line run_main prints when parse_config refuses argv (which must exit with status 2)."""
    module = MODULES[script]
    with pytest.raises(SystemExit) as exit_info:
        run_main(parse_config, module.Config, argv, module.PRESETS)
    assert exit_info.value.code == 2
    return _error_line(capsys)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_option_of_every_script_declares_its_range(script):
    assert unranged_numeric_fields(MODULES[script].Config) == []


def test_the_walker_reports_an_option_without_a_range():
    @dataclass
    class Careless(RunConfig):
        n_samples: int = field(default=64, metadata={"help": "samples per ray"})
        weights: Optional[list[float]] = field(default=None, metadata={"help": "loss weights"})
        ranged: float = field(default=1.0, metadata={"help": "a factor", "above": 0})
        name: str = field(default="x", metadata={"help": "not a number"})

    assert unranged_numeric_fields(Careless) == ["n_samples", "weights"]
    assert unranged_numeric_fields(RunConfig) == []


@pytest.mark.parametrize("script, name", _cases())
def test_a_value_just_outside_each_range_is_refused_in_one_line(script, name, capsys):
    f, tp, bounds = next(item for item in _ranged_fields(MODULES[script].Config) if item[0].name == name)
    scalar = _scalar_type(tp)
    count = bounds.get("count", 2 if _is_list(tp) else 1)
    valid = _valid_value(scalar, bounds)
    from common.cli import _number, _range_text

    for bad in _outside_values(scalar, bounds):
        values = [valid] * (count - 1) + [bad]  # a list: one bad element among good ones
        shown = " ".join(_number(v) for v in values)
        line = _refused(script, [f"--{name}", *shown.split(), "--outdir", "unused"], capsys)
        what = "is out of range" if math.isfinite(bad) else "is not a finite number"
        assert line == f"error: --{name} {shown} {what}: it must be {_range_text(bounds)}", line
    if "count" in bounds:  # one value too few
        shown = " ".join(_number(valid) for _ in range(count - 1))
        line = _refused(script, [f"--{name}", *shown.split()], capsys)
        assert line.startswith(f"error: --{name} {shown}: {count - 1} values given, it takes {count} values"), line
    # The bound itself is within the range (the ranges are not stricter than they say).
    config = MODULES[script].Config()
    check_ranges(dataclasses.replace(config, **{name: [valid] * count if _is_list(tp) else valid}))


@pytest.mark.parametrize("script, argv, message", [
    # values that depend on each other: checked once after parsing, by the Config's check()
    ("05_instant_neus", ["--bbox", "1", "2", "3"], "--bbox 1 2 3: 3 values given, it takes 6 values"),
    ("05_instant_neus", ["--bbox", "0", "0", "0", "1", "-1", "1"],
     "--bbox 0 0 0 1 -1 1: give xmin ymin zmin xmax ymax zmax, each max above its min"),
    ("05_instant_neus", ["--grid_resolution", "33"], "--grid_resolution 33 is out of range: it must be >= 2 and a multiple of 2"),
    ("05_instant_neus", ["--no-numerical_gradients", "--backend", "emulated"], "--no-numerical_gradients needs --backend torch"),
    ("04_hashnerf", ["--grid_resolution", "0"], "--grid_resolution 0 is out of range"),
    ("03_mipnerf360", ["--near", "2", "--far", "1"], "--near 2 --far 1: the near plane must be closer than the far one"),
    ("02_mipnerf", ["--min_deg", "16"], "--min_deg 16 --max_deg 16: the IPE needs min_deg < max_deg"),
    # malformed values and unknown options: argparse's refusal, in one line too
    ("01_nerf", ["--iters", "1.5"], "argument --iters: invalid int value: '1.5'"),
    ("03_mipnerf360", ["--n_nerf_samples"], "argument --n_nerf_samples/--n-nerf-samples: expected one argument"),
    ("02_mipnerf", ["--no_such_option", "3"], "unrecognized arguments: --no_such_option 3"),
    ("04_hashnerf", ["--grid_policy", "fast"], "argument --grid_policy/--grid-policy: invalid choice: 'fast'"),
])
def test_dependent_and_malformed_options_are_refused_in_one_line(script, argv, message, capsys):
    line = _refused(script, argv, capsys)
    assert line.startswith("error: ") and message in line, line
