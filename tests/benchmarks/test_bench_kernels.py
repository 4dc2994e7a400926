"""benchmarks/bench_kernels.py: a tiny run of the harness produces a complete, self-describing JSON.

Small sizes, one or two timed calls: this checks the harness (inputs, timing, the check against the twin, the
JSON), not the speed of anything.
"""
import json

from benchmarks import bench_kernels

TINY = ["--sizes", "small", "--repeats", "2", "--warmup", "0"]


def run_harness(tmp_path, *argv):
    out = tmp_path / "kernels.json"
    status = bench_kernels.main([*TINY, *argv, "--out", str(out)])
    return status, json.loads(out.read_text())


def test_emulated_backend_is_timed_checked_and_compared_with_the_twin(tmp_path):
    status, result = run_harness(tmp_path, "--backends", "torch,emulated", "--kernels", "compositing,sampling")
    assert status == 0
    rows = result["results"]
    assert [(row["kernel"], row["backend"]) for row in rows] == [
        ("compositing", "torch"), ("compositing", "emulated"), ("compositing", "torch"), ("compositing", "emulated"),
        ("sampling", "torch"), ("sampling", "emulated")]
    for row in rows:
        assert "error" not in row
        assert row["repeats"] == 2 and 0 < row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
        assert row["speedup_vs_torch"] > 0
    assert all(row["matches_torch"] for row in rows if row["backend"] == "emulated")
    # The result names the machine, the software and the command.
    assert result["machine"]["cpu_model"] and result["machine"]["cpu_cores_available"] >= 1
    assert result["versions"]["torch"] and result["versions"]["python"] and "cupy" in result["versions"]
    assert result["command"].startswith("python benchmarks/bench_kernels.py --sizes small")
    assert result["backends"] == ["torch", "emulated"] and result["device"] == "cpu"


def test_every_kernel_case_builds_and_runs_on_the_twin(tmp_path):
    status, result = run_harness(tmp_path, "--backends", "torch", "--repeats", "1")
    assert status == 0, [row.get("error") for row in result["results"]]
    kernels = {row["kernel"] for row in result["results"]}
    assert kernels == set(bench_kernels.KERNELS)
    marching = [row for row in result["results"] if row["kernel"] == "ray_marching"]
    sphere, full = (row["samples_per_ray"] for row in marching)
    assert 0 < sphere < full  # the empty-ish grid skips most of the box
