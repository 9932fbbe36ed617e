"""bench/throughput.py runs all three measurements end to end and prints its table (tiny sizes: no figures are
checked here; speed targets are read from the benchmark's own output, see README "Throughput")."""
import json
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
