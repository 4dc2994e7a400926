from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import torch

from common.cli import default_outdir, parse_config, resolve_device, run_main
from common.errors import UserError


@dataclass
class SmallConfig:
    """A small config for the tests."""

    scene: str = field(default="builtin", metadata={"help": "scene name or folder"})
    datadir: Optional[str] = field(default=None, metadata={"help": "data folder"})
    iters: int = field(default=1000, metadata={"help": "training steps"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate (100% of the paper's)"})
    n_rays: int = field(default=1024, metadata={"help": "rays per batch"})
    white_bkgd: bool = field(default=True, metadata={"help": "composite on white"})
    quick: bool = field(default=False, metadata={"help": "tiny preset"})
    chunk: Optional[int] = field(default=None, metadata={"help": "rays per render chunk"})
    background: Literal["white", "black", "random"] = field(default="white", metadata={"help": "background"})
    levels: tuple[int, ...] = field(default=(16, 32), metadata={"help": "resolutions"})
    outdir: Optional[Path] = field(default=None, metadata={"help": "run folder"})


PRESETS = {"quick": {"iters": 10, "n_rays": 64}}


def test_parse_config_defaults_when_no_arguments():
    assert parse_config(SmallConfig, [], PRESETS) == SmallConfig()


def test_parse_config_reads_every_supported_type():
    cfg = parse_config(
        SmallConfig,
        ["--iters", "1e4", "--lr", "0.01", "--no-white_bkgd", "--chunk", "4096", "--background", "random",
         "--levels", "4", "8", "16", "--outdir", "runs/x", "--datadir", "data/lego"],
    )
    assert cfg.iters == 10000 and isinstance(cfg.iters, int)
    assert cfg.lr == 0.01
    assert cfg.white_bkgd is False
    assert cfg.chunk == 4096
    assert cfg.background == "random"
    assert cfg.levels == (4, 8, 16)
    assert cfg.outdir == Path("runs/x")
    assert cfg.datadir == "data/lego"


def test_parse_config_optional_accepts_none_and_bool_accepts_dash_alias():
    cfg = parse_config(SmallConfig, ["--chunk", "none", "--no-white-bkgd", "--n-rays", "7"])
    assert cfg.chunk is None and cfg.white_bkgd is False and cfg.n_rays == 7


def test_quick_preset_is_applied_before_explicit_arguments_which_win():
    assert parse_config(SmallConfig, ["--quick"], PRESETS) == SmallConfig(quick=True, iters=10, n_rays=64)
    for argv in (["--quick", "--iters", "500"], ["--iters", "500", "--quick"]):
        cfg = parse_config(SmallConfig, argv, PRESETS)
        assert (cfg.quick, cfg.iters, cfg.n_rays) == (True, 500, 64)


def test_help_lists_field_help_defaults_and_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(SmallConfig, ["--help"], PRESETS)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "training steps (default: 1000)" in text
    assert "--white_bkgd, --no-white_bkgd" in text
    assert "iters=10" in text
    assert "100% of the paper's" in text


def test_bad_values_exit_with_status_2(capsys):
    for argv in (["--iters", "1.5"], ["--background", "green"], ["--unknown", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_config(SmallConfig, argv)
        assert exit_info.value.code == 2


def test_presets_must_name_a_bool_field_and_known_fields():
    with pytest.raises(ValueError):
        parse_config(SmallConfig, [], {"fast": {"iters": 1}})
    with pytest.raises(ValueError):
        parse_config(SmallConfig, [], {"quick": {"itres": 1}})


def test_default_outdir_is_runs_script_scene():
    assert default_outdir("01_nerf.py", "lego") == Path("runs/01_nerf/lego")
    assert default_outdir("/x/04_hashnerf.py", "data/my_scene") == Path("runs/04_hashnerf/my_scene")


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError):
        resolve_device("potato")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cpu"):
            resolve_device("cuda")


def test_run_main_prints_user_errors_on_one_line_and_exits_2(capsys):
    def main():
        raise UserError("data/x.json not found:\n  pass --datadir")

    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data/x.json not found: pass --datadir\n"


def test_run_main_catches_subclasses_and_lets_bugs_through(capsys):
    class BackendLikeError(UserError):
        pass

    def fails_with_backend_error():
        raise BackendLikeError("CuPy missing: pass --backend torch")

    with pytest.raises(SystemExit):
        run_main(fails_with_backend_error)
    assert capsys.readouterr().err.startswith("error: CuPy missing")

    def buggy():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_main(buggy)
    assert run_main(lambda: 42) == 42


@dataclass
class PresetConfig:
    iters: int = field(default=30000, metadata={"help": "steps"})
    width: int = field(default=256, metadata={"help": "MLP width"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | auto"})
    quick: bool = field(default=False, metadata={"help": "tiny preset"})
    preset: str = field(default="auto", metadata={"help": "paper | cpu | quick | auto"})


NAMED_PRESETS = {"paper": {}, "cpu": {"iters": 2000, "width": 128}, "quick": {"iters": 300, "width": 64}}


def test_a_preset_field_selects_named_presets_and_auto_follows_the_device():
    cfg = parse_config(PresetConfig, ["--device", "cpu"], NAMED_PRESETS)
    assert (cfg.preset, cfg.iters, cfg.width) == ("cpu", 2000, 128)
    cfg = parse_config(PresetConfig, ["--preset", "paper", "--device", "cpu"], NAMED_PRESETS)
    assert (cfg.preset, cfg.iters, cfg.width) == ("paper", 30000, 256)
    cfg = parse_config(PresetConfig, ["--quick", "--device", "cpu"], NAMED_PRESETS)  # --quick replaces auto
    assert (cfg.preset, cfg.quick, cfg.iters, cfg.width) == ("quick", True, 300, 64)
    cfg = parse_config(PresetConfig, ["--preset", "cpu", "--width", "32"], NAMED_PRESETS)
    assert (cfg.preset, cfg.iters, cfg.width) == ("cpu", 2000, 32)
    cfg = parse_config(PresetConfig, ["--preset", "quick"], NAMED_PRESETS)
    assert (cfg.iters, cfg.width) == (300, 64)
    expected = "paper" if torch.cuda.is_available() else "cpu"
    assert parse_config(PresetConfig, [], NAMED_PRESETS).preset == expected
    with pytest.raises(SystemExit):
        parse_config(PresetConfig, ["--preset", "huge"], NAMED_PRESETS)


# --- option ranges ---------------------------------------------------------------------------------------------
from common.cli import RunConfig, check_ranges  # noqa: E402


@dataclass
class RangedConfig(RunConfig):
    """RunConfig plus a script's own numeric fields, one of each range kind."""

    iters: int = field(default=500, metadata={"help": "steps of this script"})  # redeclared without a range
    lr: float = field(default=1e-3, metadata={"help": "learning rate", "above": 0})
    decay: float = field(default=0.9, metadata={"help": "decay", "above": 0, "max": 1})
    grid: int = field(default=32, metadata={"help": "cells per side", "min": 2, "multiple_of": 2})
    levels: tuple[int, ...] = field(default=(4, 8), metadata={"help": "levels", "min": 1})
    chunk: Optional[int] = field(default=None, metadata={"help": "rays per chunk", "min": 1})


@pytest.mark.parametrize("argv, flag, shown, allowed", [
    (["--iters", "0"], "--iters", "0", ">= 1"),          # the range of RunConfig.iters, inherited
    (["--iters", "-5"], "--iters", "-5", ">= 1"),
    (["--ckpt_every", "0"], "--ckpt_every", "0", ">= 1"),
    (["--log_every", "0"], "--log_every", "0", ">= 1"),
    (["--seed", "-1"], "--seed", "-1", "in [0, 4294967295]"),
    (["--time_budget_s", "-1"], "--time_budget_s", "-1", ">= 0"),
    (["--lr", "0"], "--lr", "0", "> 0"),
    (["--lr", "nan"], "--lr", "nan", "> 0"),
    (["--lr", "inf"], "--lr", "inf", "> 0"),
    (["--decay", "1.5"], "--decay", "1.5", "in (0, 1]"),
    (["--grid", "33"], "--grid", "33", ">= 2 and a multiple of 2"),
    (["--levels", "4", "0"], "--levels", "4 0", ">= 1"),
    (["--chunk", "0"], "--chunk", "0", ">= 1"),
])
def test_numbers_out_of_range_are_one_line_errors_naming_flag_value_and_range(argv, flag, shown, allowed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(parse_config, RangedConfig, argv)
    assert exit_info.value.code == 2
    what = "is not a finite number" if shown in ("nan", "inf") else "is out of range"
    assert capsys.readouterr().err == f"error: {flag} {shown} {what}: it must be {allowed}\n"


def test_values_inside_their_ranges_and_unset_optionals_pass():
    cfg = parse_config(RangedConfig, ["--iters", "1", "--lr", "1e-9", "--decay", "1", "--grid", "2", "--seed", "0",
                                      "--eval_every", "0", "--video_frames", "0", "--chunk", "none"])
    assert (cfg.iters, cfg.decay, cfg.grid, cfg.chunk) == (1, 1.0, 2, None)


def test_presets_are_range_checked_too():
    with pytest.raises(UserError, match="--ckpt_every 0 "):
        parse_config(RangedConfig, ["--quick"], {"quick": {"ckpt_every": 0}})


def test_check_ranges_catches_a_config_changed_in_code():
    cfg = RangedConfig()
    cfg.lr = -1.0
    with pytest.raises(UserError, match="--lr -1 is out of range"):
        check_ranges(cfg)


def test_help_shows_the_range(capsys):
    with pytest.raises(SystemExit):
        parse_config(RangedConfig, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "learning rate [> 0] (default: 0.001)" in text
    assert "steps of this script [>= 1]" in text


def test_cli_options_records_what_was_typed_and_is_none_for_a_config_built_in_code():
    cfg = parse_config(RangedConfig, ["--lr", "0.01", "--quick"], {"quick": {"iters": 3}})
    assert sorted(cfg.cli_options) == ["lr", "quick"]
    assert cfg.iters == 3  # applied by the preset, not typed
    assert RangedConfig().cli_options is None


# --- run_main: Ctrl-C and SIGTERM outside the training loop --------------------------------------------------
def test_run_main_turns_ctrl_c_into_one_line_and_status_130(capsys):
    def final_rendering():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_main(final_rendering)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted (Ctrl-C)") and "\n" not in err and "Traceback" not in err


def test_run_main_turns_sigterm_into_a_clean_exit_143_and_restores_the_handler(capsys):
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    cleaned_up = []

    def long_job():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        finally:
            cleaned_up.append(True)  # without the handler the process would die here without running this

    with pytest.raises(SystemExit) as exit_info:
        run_main(long_job)
    assert exit_info.value.code == 143 and cleaned_up == [True]
    assert capsys.readouterr().err.strip().startswith("terminated (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_saved_config_rebuilds_the_config_and_cli_options_is_no_flag(capsys):
    cfg = parse_config(RangedConfig, ["--lr", "0.01"])
    assert RangedConfig(**vars(cfg)) == cfg  # as notebooks rebuild a run from a checkpoint's config
    with pytest.raises(SystemExit):
        parse_config(RangedConfig, ["--cli_options", "x"])
