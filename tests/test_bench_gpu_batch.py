"""bench/gpu_batch.sh: each line of the job list is one job (a trailing blank once joined lines), jobs
still running at the deadline are stopped, later ones are not started, and the archive comes back."""
from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_batch.sh"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_jobs_run_one_a_line_stop_at_the_deadline_and_come_back_archived(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# a comment\na echo hi \n\nb sleep 30\nc echo late\n")
    env = {"PATH": "/usr/bin:/bin", "PRELOAD": "0", "DEADLINE": "3", "MIN_LEFT": "1", "P": "1"}
    done = subprocess.run(["bash", str(SCRIPT), str(jobs), str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    logs = tmp_path / "runs" / "gpu-batch-logs"
    assert (logs / "a.log").read_text() == "hi\n"
    summary = (logs / "summary.txt").read_text()
    assert "a rc=0" in summary and "b rc=124" in summary and "c not started" in summary
    with tarfile.open(tmp_path / "out" / "gpu_batch.tgz") as archive:
        assert "runs/gpu-batch-logs/summary.txt" in archive.getnames()
