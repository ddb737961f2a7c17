"""The benchmark runs end to end with --quick and reports every figure (speed is printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_quick_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "picollm.bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)  # the table, for CI logs
    results = json.loads(out.read_text())
    assert set(results["training"]) >= {"kgram", "lstm", "transformer", "transformer_compact_vocab"}
    assert all(r["tokens_per_s"] > 0 and r["params"] > 0 for r in results["training"].values())
    assert 0 < results["transformer_mfu"] < 1.5 and results["kgram_vs_naive"] > 1
    assert results["generation"]["kv_cache_speedup"] > 0 and results["startup"]["warm_start_to_first_step_s"] > 0
    assert "MFU" in proc.stdout and "KV cache" in proc.stdout
