import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from common.training import TrainLog, plot_psnr_curve, save_config, seed_everything, write_json


def test_seed_everything_makes_python_numpy_and_torch_repeatable():
    draws = []
    for _ in range(2):
        seed_everything(123)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    assert draws[0] == draws[1]


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_train_log_writes_csv_rows_and_shows_loss_and_psnr(tmp_path, capsys):
    with TrainLog(tmp_path, total_steps=30, desc="demo") as log:
        for step in range(1, 31):
            log.step(step, loss=0.01 / step, lr=1e-3, write=step % 10 == 0)
        log.write("eval: done")
    rows = _rows(tmp_path / "log.csv")
    assert list(rows[0]) == ["step", "loss", "psnr", "lr", "elapsed_s"]
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    assert float(rows[0]["psnr"]) == pytest.approx(30.0)  # psnr defaults to -10 log10(loss)
    assert float(rows[2]["lr"]) == 1e-3
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    captured = capsys.readouterr()
    assert "demo" in captured.err and "psnr=" in captured.err and "loss=" in captured.err  # the bar
    assert "30/30" in captured.err
    assert "eval: done" in captured.out + captured.err
    assert (tmp_path / "psnr.png").exists()  # close() plots the curve


def test_train_log_extra_values_and_notes_become_columns(tmp_path, capsys):
    with TrainLog(tmp_path, total_steps=30, progress=False) as log:
        log.step(10, loss=0.1, psnr=10.0, samples_per_ray=12.5)
        log.step(20, loss=0.05, psnr=13.0, samples_per_ray=10.0)
        log.note(20, val_psnr=12.5)  # same step as the last row: merged into it
        log.note(25, val_psnr=13.5)  # a row of its own
        log.step(30, loss=0.01, psnr=20.0, samples_per_ray=8.0)
    rows = _rows(tmp_path / "log.csv")
    assert list(rows[0]) == ["step", "loss", "psnr", "lr", "elapsed_s", "samples_per_ray", "val_psnr"]
    assert [(r["step"], r["val_psnr"]) for r in rows] == [("10", ""), ("20", "12.5"), ("25", "13.5"), ("30", "")]
    assert rows[2]["loss"] == "" and rows[3]["samples_per_ray"] == "8"
    assert "step 25: val_psnr=13.5" in capsys.readouterr().out


def test_train_log_resume_drops_rows_after_the_checkpoint_and_continues_the_clock(tmp_path):
    with TrainLog(tmp_path, total_steps=40, progress=False) as log:
        for step in (10, 20, 30):
            log.step(step, loss=0.1, psnr=10.0)
    last_kept = float(_rows(tmp_path / "log.csv")[1]["elapsed_s"])
    with TrainLog(tmp_path, total_steps=40, start_step=20, progress=False) as log:
        log.step(40, loss=0.05, psnr=13.0)
    rows = _rows(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 40]
    assert float(rows[2]["elapsed_s"]) >= last_kept
    with TrainLog(tmp_path, total_steps=40, progress=False):  # a fresh run (start_step 0) starts a new log
        pass
    assert _rows(tmp_path / "log.csv") == []


def test_plot_psnr_curve_writes_a_png(tmp_path):
    with TrainLog(tmp_path, total_steps=100, progress=False) as log:
        for step in range(10, 101, 10):
            log.step(step, loss=1.0 / step)
        log.note(100, val_psnr=19.0)
    png = tmp_path / "psnr.png"
    image = iio.imread(png)
    assert image.shape[:2] == (400, 600) and image.std() > 0
    other = plot_psnr_curve(tmp_path / "log.csv", tmp_path / "plots" / "curve.png", title="run")
    assert other.exists()


@dataclass
class _Config:
    scene: str = field(default="builtin", metadata={"help": "scene"})
    outdir: Path | None = None
    iters: int = 10


def test_write_json_and_save_config(tmp_path):
    path = write_json(tmp_path / "sub" / "metrics.json", {"psnr": np.float32(30.5), "t": torch.tensor([1, 2]),
                                                          "dir": Path("runs/x"), "cfg": _Config()})
    data = json.loads(path.read_text())
    expected_cfg = {"scene": "builtin", "outdir": None, "iters": 10}
    assert data == {"psnr": 30.5, "t": [1, 2], "dir": "runs/x", "cfg": expected_cfg}
    config = save_config(tmp_path, _Config(outdir=Path("runs/a"), iters=3))
    assert config == tmp_path / "config.json"
    assert json.loads(config.read_text()) == {"scene": "builtin", "outdir": "runs/a", "iters": 3}


def test_decayed_learning_rate_is_exponential_in_steps_or_in_the_time_budget():
    from common.training import decayed_learning_rate

    assert decayed_learning_rate(1e-2, 1e-4, 0, 100) == pytest.approx(1e-2)
    assert decayed_learning_rate(1e-2, 1e-4, 50, 100) == pytest.approx(1e-3)  # the geometric mean half-way
    assert decayed_learning_rate(1e-2, 1e-4, 100, 100) == pytest.approx(1e-4)
    assert decayed_learning_rate(1e-2, 1e-4, 500, 100) == pytest.approx(1e-4)  # never below lr_final
    # With a time budget, whichever of steps and seconds is further along sets the rate.
    assert decayed_learning_rate(1e-2, 1e-4, 10, 100, elapsed_s=30, time_budget_s=60) == pytest.approx(1e-3)
    assert decayed_learning_rate(1e-2, 1e-4, 50, 100, elapsed_s=1, time_budget_s=60) == pytest.approx(1e-3)


# --- JSON that stays JSON ----------------------------------------------------------------------------------------
def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as jq, JavaScript and most JSON readers do."""
    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_writes_non_finite_numbers_as_null(tmp_path):
    path = write_json(tmp_path / "metrics.json", {
        "loss": float("nan"), "psnr": float("inf"), "views": [{"psnr": np.float32("nan")}, {"psnr": 20.5}],
        "t": torch.tensor([1.0, float("-inf")]), "a": np.array([np.nan, 2.0])})
    assert _strict_json(path.read_text()) == {"loss": None, "psnr": None, "views": [{"psnr": None}, {"psnr": 20.5}],
                                              "t": [1.0, None], "a": [None, 2.0]}


def test_write_json_that_fails_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = write_json(tmp_path / "metrics.json", {"psnr": 30.0})
    with pytest.raises(TypeError):
        write_json(path, {"psnr": object()})
    assert json.loads(path.read_text()) == {"psnr": 30.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# --- the NaN guard ------------------------------------------------------------------------------------------------
from common.cli import run_main  # noqa: E402
from common.errors import Terminated, UserError  # noqa: E402
from common.training import GracefulInterrupt, NonFiniteError, check_finite  # noqa: E402


def _params_with_grads(*grads):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_check_finite_passes_finite_loss_and_gradients():
    check_finite(7, torch.tensor(0.25), _params_with_grads(torch.ones(3), torch.full((2, 2), 1e10)), lr=1e-3)
    check_finite(7, torch.tensor(0.25), [torch.nn.Parameter(torch.ones(2))])  # a parameter without grad is fine


@pytest.mark.parametrize("loss, grad, what", [
    (float("nan"), 1.0, "the loss is nan"),
    (float("inf"), 1.0, "the loss is inf"),
    (0.5, float("nan"), "a gradient is not finite"),
    (0.5, float("-inf"), "a gradient is not finite"),
])
def test_check_finite_names_the_step_and_the_likely_causes_in_one_line(loss, grad, what, capsys):
    params = _params_with_grads(torch.ones(4), torch.tensor([0.0, grad, 1.0]))
    with pytest.raises(NonFiniteError) as error:
        check_finite(5, torch.tensor(loss), params, lr=1e6)
    message = str(error.value)
    assert message.startswith(f"training diverged at step 5: {what}.")
    assert "--lr 1e+06" in message and "data" in message and "\n" not in message
    assert isinstance(error.value, UserError)  # run_main: one line, exit status 2
    with pytest.raises(SystemExit) as exit_info:
        run_main(check_finite, 5, torch.tensor(loss), params)
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: training diverged at step 5")


def test_check_finite_leaves_inf_gradients_to_an_enabled_grad_scaler():
    class EnabledScaler:  # fp16 overflow: the GradScaler skips that step and lowers its scale, as designed
        def is_enabled(self):
            return True

    params = _params_with_grads(torch.tensor([float("inf")]))
    check_finite(3, torch.tensor(0.5), params, scaler=EnabledScaler())
    with pytest.raises(NonFiniteError):
        check_finite(3, torch.tensor(float("nan")), params, scaler=EnabledScaler())


def test_check_finite_catches_a_real_diverging_step():
    # lr 1e6 on a tiny regression: Adam moves every weight by ~1e6 per step, and the loss overflows at step 2.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e6)
    x, y = torch.randn(64, 3), torch.rand(64, 3)
    with pytest.raises(NonFiniteError) as error:
        for step in range(1, 200):
            loss = torch.nn.functional.mse_loss(model(x) ** 3, y)  # overflows float32 once the weights explode
            optimizer.zero_grad()
            loss.backward()
            check_finite(step, loss, model.parameters(), lr=1e6)
            optimizer.step()
    assert str(error.value).startswith("training diverged at step 2")
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was never applied


# --- SIGTERM like Ctrl-C ------------------------------------------------------------------------------------------
def _send(signum):
    import os

    os.kill(os.getpid(), signum)
    for _ in range(1000):  # Python runs the handler between bytecodes
        pass


@pytest.mark.parametrize("signame, name, status", [("SIGINT", "Ctrl-C", 130), ("SIGTERM", "SIGTERM", 143)])
def test_graceful_interrupt_asks_the_loop_to_stop_on_ctrl_c_and_on_sigterm(signame, name, status, capsys):
    import signal

    signum = getattr(signal, signame)
    before = signal.getsignal(signum)
    with GracefulInterrupt() as interrupt:
        _send(signum)
        assert interrupt.requested and interrupt.signal_name == name and interrupt.exit_status == status
        assert capsys.readouterr().out.strip().startswith(f"{name}: finishing this step")
        with pytest.raises(Terminated if signame == "SIGTERM" else KeyboardInterrupt):
            _send(signum)  # a second one stops at once
    assert signal.getsignal(signum) is before
