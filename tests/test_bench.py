"""The benchmark runs end to end (python -m bench --quick) and writes the keys README's table comes from."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_benchmark_runs(tmp_path):
    out = tmp_path / "latest.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ceiling_img_s"] > 0 and result["naive_img_s"] > 0
    for level in ("c1", "c4", "c16", "c64"):
        assert {"img_s", "p50_ms", "p99_ms"} <= set(result["service"][level])
        assert result["service"][level]["statuses"] == {"200": result["service"][level]["requests"]}
    assert result["memory"]["statuses"] == {"200": result["memory"]["requests"]}
    assert "| POST /service | 16 |" in run.stdout
    assert 0 < result["explain"]["median_s"] <= result["explain"]["max_s"] and "POST /explain" in run.stdout
