"""bench/throughput.py runs all three measurements end to end and prints its table (tiny sizes: no figures are
checked here; speed targets are read from the benchmark's own output, see README "Throughput")."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_throughput_benchmark_prints_a_row_per_script(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, f"{REPO}/bench/throughput.py", "--models", "simple_cnn",
                             "--synthetic-size", "2048", "--samples-per-step", "32", "--seconds", "0.5",
                             "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["script"], r["model"]) for r in rows] == [("rotation", "simple_cnn"), ("siamese", "simple_cnn")]
    for row in rows:
        for kind in ("limit", "project", "seed"):
            assert row[kind]["samples_per_s"] > 0 and row[kind]["peak_memory_mb"] > 0
        assert row["efficiency"] == row["project"]["samples_per_s"] / row["limit"]["samples_per_s"]
    assert "rotation  simple_cnn" in result.stdout and "siamese   simple_cnn" in result.stdout


def test_rotnet_table_script_pretrains_then_prints_the_table(tmp_path, image_folder):
    # The whole script on a 12-image folder: pretraining (2 steps), evaluate.py on both networks, the timing line.
    out = tmp_path / "table"
    env = {**os.environ, "DATA_DIR": str(image_folder), "PROBE_EPOCHS": "2", "EPOCHS": "1",
           "PRETRAIN_ARGS": "--batch-size 4 --max-steps 2 --knn-k 3 --probe-epochs 1"}
    result = subprocess.run(["bash", f"{REPO}/bench/rotnet_table.sh", str(out)], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "rotnet_table.json").read_text())
    assert report["model"] == "nin" and report["train_images"] == 12 and report["test_images"] == 6
    assert set(report["trained"]) == set(report["untrained"]) == {"block1", "block2", "block3", "block4"}
    assert json.loads((out / "pretrain" / "results.json").read_text())["steps"] == 2
    assert "| block1 | 24576 |" in result.stdout and "paper nonlinear" in result.stdout
    assert "pretrain: " in result.stdout and ", total: " in (out / "time.txt").read_text()
