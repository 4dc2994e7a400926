"""benchmarks/compare.py: the table from run folders, real cells on every engine, and resuming after a kill.

The cells are real runs of the scripts on their built-in scenes, kept tiny (the scripts' quick presets, tens to
200 steps, 2 test views at half size): `--quick`, all five methods, as the README gives it, then 04 alone on the
Ray and SLURM paths and through a kill, so that the whole file stays within its CI budget on 2 cores.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import compare

REPO = Path(__file__).resolve().parents[2]
# A cell that learns in a few seconds: 04's quick preset (60 steps beat a constant image on the built-in scene).
TINY = ["--script_quick", "--time_budget_s", "0", "--n_test_views", "2", "--downscale", "2", "--eval_every", "20"]


def fake_cell(root, scene, method, seed, psnr, returncode=0, views=("test/r_0.png", "test/r_7.png"), log=True):
    folder = compare.cell_dir(root, scene, method, seed)
    (folder / "test").mkdir(parents=True)
    if returncode is not None:
        (folder / "cell.json").write_text(json.dumps(dict(returncode=returncode, wall_s=50.0, wall_s_all_attempts=70.0)))
    (folder / "test" / "metrics.json").write_text(json.dumps(dict(
        mean_psnr=psnr, mean_ssim=0.9, mean_lpips=0.1 + seed / 100, constant_psnr=11.0, eval_s=4.0, peak_rss_mib=900.0,
        peak_gpu_mib=None, iters=300, views=[dict(file=v, psnr=psnr) for v in views])))
    if log:
        with open(folder / "log.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["step", "loss", "psnr", "lr", "elapsed_s", "val_psnr"])
            writer.writerow([100, 0.01, 20, 1e-3, 10.0, ""])
            writer.writerow([100, "", "", "", 10.5, psnr - 2])
            writer.writerow([300, 0.005, 23, 1e-3, 30.25, psnr])
    return folder


def test_table_from_run_folders(tmp_path, capsys):
    """Rows per cell from metrics.json, log.csv and cell.json; the Markdown row is the mean over the finished seeds;
    unfinished cells show their state and no scores; the plot is drawn from val_psnr."""
    fake_cell(tmp_path, "builtin", "01_nerf", 0, 24.0)
    fake_cell(tmp_path, "builtin", "01_nerf", 1, 26.0)
    fake_cell(tmp_path, "builtin", "04_hashnerf", 0, 30.0, returncode=3)
    fake_cell(tmp_path, "builtin", "04_hashnerf", 1, 31.0, returncode=None)  # killed: log.csv, no cell.json
    rows = compare.build_table(tmp_path, ["01_nerf", "04_hashnerf", "02_mipnerf"], ["builtin"], [0, 1])
    assert len(rows) == 6
    by = {(r["method"], r["seed"]): r for r in rows}
    assert by[("01_nerf", 0)]["status"] == "done" and by[("01_nerf", 0)]["psnr"] == 24.0
    assert by[("01_nerf", 0)]["steps"] == 300 and by[("01_nerf", 0)]["train_s"] == 30.25
    assert by[("01_nerf", 0)]["eval_s_per_view"] == 2.0 and by[("01_nerf", 0)]["wall_s"] == 70.0
    assert by[("04_hashnerf", 0)]["status"] == "dead model"
    assert by[("04_hashnerf", 1)]["status"] == "interrupted" and by[("04_hashnerf", 1)]["psnr"] is None
    assert by[("02_mipnerf", 0)]["status"] == "not run"
    summary = {s["method"]: s for s in compare.summary_rows(rows)}
    assert summary["01_nerf"]["psnr"] == 25.0 and summary["01_nerf"]["psnr_std"] == pytest.approx(2 ** 0.5)
    assert summary["01_nerf"]["seeds"] == "2/2" and summary["04_hashnerf"]["seeds"] == "1/2"
    paths = compare.write_table(rows, tmp_path / "table")
    md = paths["md"].read_text().splitlines()
    assert len(md) == 2 + 3 and "25.00 ± 1.41" in md[2] and md[2].count("|") == md[0].count("|")
    with open(paths["csv"]) as file:
        table = list(csv.DictReader(file))
    assert tuple(table[0]) == compare.COLUMNS and len(table) == 6
    assert compare.psnr_curves(tmp_path, rows)["builtin"][("01_nerf", 1)] == [(10.5, 24.0), (30.25, 26.0)]
    assert compare.plot_psnr_vs_time(tmp_path, rows, tmp_path / "plot.png").stat().st_size > 10_000
    # methods scored on other views than the rest of their scene: one warning
    fake_cell(tmp_path, "builtin", "05_instant_neus", 0, 20.0, views=("test/r_1.png",))
    capsys.readouterr()
    compare.build_table(tmp_path, ["01_nerf", "05_instant_neus"], ["builtin"], [0])
    assert "different test views" in capsys.readouterr().err


def test_cells_are_planned_with_the_same_views_and_resume():
    cfg = compare.CompareConfig(methods=["01_nerf", "05_instant_neus"], scenes=["lego"], seeds=[0, 3], n_test_views=25,
                                downscale=4, time_budget_s=300.0, extra="--backend torch")
    tasks = compare.plan_cells(cfg)
    assert len(tasks) == 4
    for task in tasks:
        command = task["command"]
        assert command[0] == f"{task['method']}.py" and "--resume" in command
        for flag, value in (("--n_test_views", "25"), ("--downscale", "4"), ("--time_budget_s", "300.0"),
                            ("--scene", "lego"), ("--seed", str(task["seed"])), ("--backend", "torch")):
            assert command[command.index(flag) + 1] == value
    cores = os.cpu_count() or 1
    assert all(t["threads"] == cores for t in tasks)  # one cell at a time: all the cores
    shared = compare.plan_cells(compare.CompareConfig(methods=["01_nerf"], jobs=2 * cores))
    assert shared[0]["threads"] == 1  # more cells than cores: one thread each, not oversubscribed
    assert compare.plan_cells(compare.CompareConfig(methods=["01_nerf"], engine="ray", cpus_per_cell=3))[0]["threads"] == 3
    assert [compare.method_name(m) for m in ("1", "04", "05_instant_neus.py")] == ["01_nerf", "04_hashnerf", "05_instant_neus"]
    with pytest.raises(compare.UserError):
        compare.method_name("06")


def test_a_poses_bounds_capture_gets_the_same_images_in_every_cell(tmp_path):
    """03 reads --downscale N of a poses_bounds.npy capture as images_N/ of the full-size photographs, the others
    read images_4/ reduced by N: 03's cell gets 4 N, so that one table scores every method on the same images."""
    import inspect
    from common.data.load import load_scene
    capture = tmp_path / "fern"
    capture.mkdir()
    (capture / "poses_bounds.npy").write_bytes(b"")
    assert compare.LLFF_BASE_FACTOR == inspect.signature(load_scene).parameters["llff_factor"].default
    for downscale, expected_03 in ((8, "32"), (1, "4")):
        tasks = compare.plan_cells(compare.CompareConfig(methods=["01_nerf", "02_mipnerf", "03_mipnerf360"],
                                                         scenes=[str(capture)], downscale=downscale))
        given = {t["method"]: (t["command"][t["command"].index("--downscale") + 1] if "--downscale" in t["command"]
                               else "1") for t in tasks}
        assert given == {"01_nerf": str(downscale), "02_mipnerf": str(downscale), "03_mipnerf360": expected_03}
    # every other layout: the same factor for every method
    blender = compare.plan_cells(compare.CompareConfig(methods=["01_nerf", "03_mipnerf360"], scenes=["lego"], downscale=4))
    assert [t["command"][t["command"].index("--downscale") + 1] for t in blender] == ["4", "4"]


def test_options_have_ranges_and_quick_covers_the_family():
    from common.cli import parse_config, unranged_numeric_fields

    assert unranged_numeric_fields(compare.CompareConfig) == []
    for bad in (["--jobs", "0"], ["--time_budget_s", "-1"], ["--n_test_views", "-1"], ["--seeds", "0", "-2"], ["--time_budget_s", "nan"]):
        with pytest.raises(compare.UserError, match=bad[0]):
            parse_config(compare.CompareConfig, bad, presets=compare.PRESETS)
    quick = parse_config(compare.CompareConfig, ["--quick"], presets=compare.PRESETS)
    tasks = compare.plan_cells(quick)
    assert [t["method"] for t in tasks] == list(compare.METHODS) and all("--quick" in t["command"] for t in tasks)
    assert all(t["command"][t["command"].index("--time_budget_s") + 1] == "0.0" for t in tasks)
    assert [int(t["command"][t["command"].index("--iters") + 1]) for t in tasks] == list(compare.QUICK_ITERS.values())
    assert [t["scene"] for t in tasks] == ["builtin", "builtin", "builtin_unbounded", "builtin", "builtin"]


def test_quick_runs_all_five_and_each_beats_a_constant_image(tmp_path):
    """`python -m benchmarks.compare --quick`, exactly as the README gives it (but its own output folder), two
    cells at a time: five rows, each method on its own built-in scene, each beating a constant image on the same
    two views by at least 1 dB, with LPIPS, times and memory in the table and a val_psnr curve in the plot."""
    code = compare.main(["--quick", "--jobs", "2", "--outdir", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "table.json").read_text())
    assert [(r["method"], r["scene"], r["status"]) for r in rows] == [
        (method, compare.OWN_SCENES.get(method, "builtin"), "done") for method in compare.METHODS]
    for row in rows:
        assert row["psnr"] > row["constant_psnr"] + 1.0, row  # measured: 2.5 (03) to 11 dB (04) above it
        assert 0 < row["ssim"] <= 1 and (0 < row["lpips"] < 1 or compare_lpips_missing()), row
        assert row["steps"] == compare.QUICK_ITERS[row["method"]] and row["train_s"] > 0 and row["eval_s"] > 0
        assert row["n_test_views"] == 2 and row["peak_rss_mib"] > 100 and row["peak_gpu_mib"] is None
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {method} |" in table for method in compare.METHODS), table
    curves = compare.psnr_curves(tmp_path, compare.build_table(tmp_path, list(compare.METHODS), ["own"], [0]))
    assert {key for scene in curves.values() for key in scene} == {(m, 0) for m in compare.METHODS}
    assert (tmp_path / "psnr_vs_time.png").stat().st_size > 10_000


def test_kill_then_resume(tmp_path):
    """SIGTERM to the command: the running cell checkpoints and stops, the next cell does not start; the same
    command continues the first from its checkpoint to the end and runs the second; a third run keeps both."""
    argv = ["--methods", "04", "--seeds", "0", "1", "--outdir", str(tmp_path), *TINY, "--iters", "60",
            "--extra", "--ckpt_every 10 --batch_rays 256 --log_every 5"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.compare", *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cell = compare.cell_dir(tmp_path, "builtin", "04_hashnerf", 0)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cell.glob("ckpt_*.pt")):
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143, output
    assert "run the same command again" in output
    assert json.loads((cell / "cell.json").read_text())["returncode"] in (143, 130)
    saved_step = max(int(p.stem.split("_")[1]) for p in cell.glob("ckpt_*.pt"))
    assert 10 <= saved_step < 60
    assert not compare.cell_dir(tmp_path, "builtin", "04_hashnerf", 1).exists()  # the second cell never started

    assert compare.main(argv) == 0
    assert json.loads((compare.cell_dir(tmp_path, "builtin", "04_hashnerf", 1) / "cell.json").read_text())["returncode"] == 0
    assert "resuming from" in (cell / "compare.log").read_text()
    metrics = json.loads((cell / "test" / "metrics.json").read_text())
    assert metrics["iters"] == 60
    steps = [int(float(r["step"])) for r in compare.read_log(cell)]
    assert steps[0] < saved_step < steps[-1] == 60  # one log, continued
    before = (cell / "cell.json").read_text()
    assert compare.main(argv) == 0
    assert (cell / "cell.json").read_text() == before


def test_ray_engine_end_to_end(local_ray_cluster, tmp_path):
    """The same command on a Ray cluster (a local one with 2 CPUs): the cell runs in a Ray worker."""
    import ray

    try:
        code = compare.main(["--methods", "04", "--engine", "ray", "--ray_address", local_ray_cluster, "--outdir",
                             str(tmp_path), *TINY, "--iters", "30", "--extra", "--batch_rays 256"])
    finally:  # the connection carries this module's PYTHONPATH for the workers: other tests connect afresh
        ray.shutdown()
    rows = json.loads((tmp_path / "table.json").read_text())
    assert code == 0 and rows[0]["status"] in ("done", "dead model") and rows[0]["steps"] == 30
    assert rows[0]["lpips"] is not None or compare_lpips_missing()


def test_submitit_engine_end_to_end(tmp_path):
    """The SLURM path through submitit's local executor: the cell runs as a job of the array."""
    pytest.importorskip("submitit")
    code = compare.main(["--methods", "04", "--engine", "slurm", "--submitit_cluster", "local", "--outdir",
                         str(tmp_path), *TINY, "--iters", "30", "--extra", "--batch_rays 256"])
    rows = json.loads((tmp_path / "table.json").read_text())
    assert code == 0 and rows[0]["status"] in ("done", "dead model") and rows[0]["steps"] == 30
    assert list((tmp_path / "submitit").glob("*/*_result.pkl"))


def compare_lpips_missing() -> bool:
    from common.lpips import find_weights

    return find_weights() is None


def test_readme_block_is_generated_from_the_committed_table(tmp_path, monkeypatch):
    """README's "What to expect" block is exactly what --readme_from makes of the committed results; the block
    says when the measurement was made under load."""
    import re

    from benchmarks import machine

    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- compare-table: generated by `python -m benchmarks.compare --readme_from (\S+)`", readme)
    assert found, "README.md lost its compare-table block"
    if (machine.RESULTS_DIR / f"compare-{found.group(1)}.json").exists():
        begin, end = readme.index("<!-- compare-table:"), readme.index(compare.README_END) + len(compare.README_END)
        assert readme[begin:end] == compare.readme_block(found.group(1))

    rows = [dict(zip(compare.COLUMNS, ["04_hashnerf", "lego", 0, "done", 25.0, 0.9, 0.1, 11.0, 500, 120.0, 8.0, 1.0,
                                       8, 900.0, None, 200.0]))]
    monkeypatch.setattr(machine, "RESULTS_DIR", tmp_path)
    (tmp_path / "compare-x.json").write_text(json.dumps(dict(
        command="python -m benchmarks.compare --methods 04", machine=dict(cpu_model="Some CPU", cpu_cores_available=2),
        load_average_at_start=[7.5, 6.0, 5.0], load_average_at_end=[1.0, 1.0, 1.0],
        settings=dict(time_budget_s=120.0, n_test_views=8, jobs=1, engine="local"), rows=rows)))
    fake_readme = tmp_path / "README.md"
    fake_readme.write_text("before\n" + compare.README_BEGIN.format(name="x") + "\nold\n" + compare.README_END + "\nafter\n")
    compare.update_readme("x", fake_readme)
    text = fake_readme.read_text()
    assert text.startswith("before\n<!-- compare-table") and text.endswith(compare.README_END + "\nafter\n")
    assert "old" not in text and "| lego | 04_hashnerf | 1/1 | 25.00 |" in text and "under load" in text
    assert "load average (1 min) 7.5 at the start" in text
    assert "120 s of training per method" in text and "8 test views spread evenly" in text
    assert "2 PyTorch threads per run" in text  # 2 cores, one cell at a time

    # a split with fewer views than asked (fern: 3), a step budget, cells 2 at a time: said as they were
    rows[0]["n_test_views"] = 3
    (tmp_path / "compare-y.json").write_text(json.dumps(dict(
        command="python -m benchmarks.compare --quick", machine=dict(cpu_model="Some CPU", cpu_cores_logical=2),
        load_average_at_start=[1.0, 1.0, 1.0], load_average_at_end=[2.5, 1.0, 1.0],  # the cells' own 2 threads
        settings=dict(time_budget_s=0.0, n_test_views=8, jobs=2, engine="local", quick=True), rows=rows)))
    block = compare.readme_block("y")
    assert "all 3 test views" in block and "a fixed step count per method" in block and "0 s of training" not in block
    assert "1 PyTorch thread per run" in block and "under load" not in block
