"""benchmarks/train_to_psnr.py against a fake training script that writes log.csv and metrics.json instantly.

The fake follows the interface of the numbered scripts (--scene, --time_budget_s, --eval_every, --outdir, ...):
one "step" per 0.5 s of pretend training time, held-out PSNR 10 + step / 30 dB every --eval_every steps, written
as separate note rows without elapsed_s (the harness must take the time of the same step).
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.train_to_psnr import psnr_at, read_curve

REPO_ROOT = Path(__file__).resolve().parents[2]

FAKE_SCRIPT = '''
import argparse, json, sys
from pathlib import Path
parser = argparse.ArgumentParser()
for flag in ("--scene", "--outdir", "--device", "--backend", "--preset", "--fake_flag"):
    parser.add_argument(flag)
parser.add_argument("--time_budget_s", type=float)
parser.add_argument("--eval_every", type=int)
parser.add_argument("--downscale", type=int)
parser.add_argument("--exit_status", type=int, default=0)
args = parser.parse_args()
outdir = Path(args.outdir)
(outdir / "test").mkdir(parents=True, exist_ok=True)
(outdir / "argv.json").write_text(json.dumps(sys.argv[1:]))
(outdir / "config.json").write_text(json.dumps({"outdir": args.outdir}))  # as the scripts save their config
with open(outdir / "log.csv", "w") as log:
    log.write("step,loss,psnr,lr,elapsed_s,val_psnr\\n")
    for step in range(10, int(args.time_budget_s / 0.5) + 1, 10):
        log.write(f"{step},0.01,20.0,0.001,{step * 0.5},\\n")
        if step % args.eval_every == 0:
            log.write(f"{step},,,,,{10 + step / 30}\\n")
(outdir / "test" / "metrics.json").write_text(json.dumps({"mean_psnr": 31.5, "mean_ssim": 0.95,
                                                        "views": [{}, {}], "backend": "torch"}))
print("fake training done")
sys.exit(args.exit_status)
'''


@pytest.fixture
def fake_script(tmp_path):
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE_SCRIPT)
    return path


def run_harness(*argv):
    return subprocess.run([sys.executable, "benchmarks/train_to_psnr.py", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_curve_checkpoints_and_test_metrics_are_summarised(tmp_path, fake_script):
    out, run_dir = tmp_path / "results" / "fake", tmp_path / "run"
    done = run_harness(str(fake_script), "--time_budget_s", "300", "--eval_every", "50", "--preset", "quick",
                       "--device", "cpu", "--targets_db", "20,30,40", "--run_dir", str(run_dir), "--out", str(out),
                       "--", "--fake_flag", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fake training done" in done.stdout

    passed = json.loads((run_dir / "argv.json").read_text())
    assert passed == ["--scene", "builtin", "--time_budget_s", "300", "--eval_every", "50", "--outdir",
                      str(run_dir.resolve()), "--device", "cpu", "--preset", "quick", "--fake_flag", "1"]

    result = json.loads(out.with_suffix(".json").read_text())
    # Steps 10..600 at 0.5 s each; checks every 50 steps (25 s): PSNR 10 + step / 30.
    assert result["final_step"] == 600 and result["train_elapsed_s"] == pytest.approx(300.0)
    assert result["iters_per_s"] == pytest.approx(2.0)
    assert result["psnr_at_min"]["1"] == pytest.approx(10 + 100 / 30)  # last check at or before 60 s: step 100
    assert result["psnr_at_min"]["2"] == pytest.approx(10 + 200 / 30)
    assert result["psnr_at_min"]["5"] == pytest.approx(10 + 600 / 30)
    assert result["psnr_at_min"]["10"] is None  # training stopped at 5 minutes
    assert result["minutes_to_psnr"]["20"] == pytest.approx(150 / 60)  # 20 dB first at step 300, 150 s
    assert result["minutes_to_psnr"]["30"] == pytest.approx(5.0)  # the last check, step 600
    assert result["minutes_to_psnr"]["40"] is None
    assert result["test"]["mean_psnr"] == 31.5 and result["test"]["mean_ssim"] == 0.95
    assert result["test"]["n_views"] == 2
    assert result["returncode"] == 0 and result["machine"]["cpu_model"] and result["versions"]["torch"]
    assert result["command"].startswith("python benchmarks/train_to_psnr.py ")
    assert "--time_budget_s 300" in result["training_command"]

    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["elapsed_s", "step", "val_psnr"] and len(rows) == 12
    assert float(rows[0]["elapsed_s"]) == pytest.approx(25.0) and rows[0]["step"] == "50"
    assert out.with_suffix(".png").stat().st_size > 1000


def test_a_failing_script_is_reported_and_its_partial_curve_kept(tmp_path, fake_script):
    out, run_dir = tmp_path / "failed", tmp_path / "run"
    done = run_harness(str(fake_script), "--time_budget_s", "60", "--eval_every", "20", "--run_dir", str(run_dir),
                       "--out", str(out), "--", "--exit_status", "3")
    assert done.returncode == 1
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["returncode"] == 3 and result["n_val_points"] == 6


def test_psnr_at_a_checkpoint_is_the_last_check_at_or_before_it(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,elapsed_s,val_psnr\n1,10.0,\n2,20.0,15.0\n3,30.0,nan\n4,40.0,18.0\n")
    curve, progress = read_curve(log)
    assert [point["step"] for point in curve] == [2, 4]
    assert progress == {"final_step": 4, "train_elapsed_s": 40.0}
    assert psnr_at(curve, 19.9) is None and psnr_at(curve, 20.0) == 15.0 and psnr_at(curve, 39.0) == 15.0


def test_a_relative_run_dir_is_recorded_as_given_not_as_this_machines_path(tmp_path, fake_script):
    """The script is handed an absolute --outdir (it runs from the repository root), and saves it in its
    config.json; the result file must keep the folder as the user gave it: no path of this machine in it."""
    import shutil
    import uuid

    run_dir_text = f"runs/pytest-train-to-psnr-{uuid.uuid4().hex[:8]}"
    try:
        out = tmp_path / "relative"
        done = run_harness(str(fake_script), "--time_budget_s", "20", "--eval_every", "20", "--run_dir", run_dir_text,
                           "--out", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(out.with_suffix(".json").read_text())
        assert result["run_dir"] == run_dir_text
        assert result["script_config"]["outdir"] == run_dir_text
        assert str(REPO_ROOT) not in out.with_suffix(".json").read_text().replace(str(fake_script), "")
    finally:
        shutil.rmtree(REPO_ROOT / run_dir_text, ignore_errors=True)
