"""The prepared GPU check runs end to end in its dry mode (tiny sizes, a few steps), so it works before a GPU is lent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_mode_runs_every_part(tmp_path):
    export = tmp_path / "export"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--out", str(tmp_path / "work"),
         "--export", str(export)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((export / "gpu_check.json").read_text())
    sections = result["sections"]
    assert result["dry"] and list(sections) == ["cuda_tests", "fsdp", "throughput", "mango", "savings"]
    assert all(s["status"] == "ok" for n, s in sections.items() if n != "fsdp"), sections
    assert sections["fsdp"]["status"] == ("ok" if result["device"]["type"] == "cuda" else "skipped")
    rows = sections["throughput"]["models"]
    assert len(rows) == 2 and all(r["tokens_per_s"] > 0 and 0 < r["mfu_vs_matmul"] for r in rows.values())
    ranks = sections["mango"]["ranks"]
    assert set(ranks) == {"rank 1", "rank 2", "rank 4"} and all(r["fit_step_ms"] > 0 for r in ranks.values())
    methods = sections["savings"]["methods"]
    assert set(methods) == {"scratch", "bert2bert", "ligo", "mango"}
    assert methods["scratch"]["final_loss"]["mean"] < methods["scratch"]["initial_loss"]["mean"]
    assert {"report.md", "loss_vs_flops.png", "cuda_tests.log"} <= {p.name for p in export.iterdir()}
