"""benchmarks/bench_render.py: a tiny run times each chunk size, records the machine, and every chunk size
renders the same image (the chunk is a speed and memory knob, never a quality one)."""
import json

from benchmarks import bench_render


def test_render_harness_times_every_chunk_and_the_image_does_not_depend_on_it(tmp_path):
    out = tmp_path / "render.json"
    result = bench_render.main(["--scripts", "04_hashnerf", "--preset", "quick", "--chunks", "1000", "4096", "--views",
                                "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert [(row["script"], row["chunk"]) for row in saved["rows"]] == [("04_hashnerf", 1000), ("04_hashnerf", 4096)]
    for row in saved["rows"]:
        assert row["seconds_per_view"] > 0
        assert row["max_abs_diff_vs_first_chunk"] < 1e-5, row
    assert saved["machine"]["cpu_model"] and saved["command"].startswith("python ")
    assert saved["image"] == "100x100" and saved["preset"] == "quick"
