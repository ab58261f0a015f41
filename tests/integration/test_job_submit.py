"""``ray start --head`` + ``ray job submit --working-dir . -- python -m tsal_dist.train ...`` on
this machine: the job joins the cluster (RAY_ADDRESS), trains on its CPUs and writes the run folder.

The head gets its own temp dir and free ports so that it never meets another Ray instance on the
machine, and is stopped by killing exactly the processes it started (``ray stop`` would stop every
Ray instance of this user).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names ``text`` (our head's unique temp dir)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ")
                if text in cmd.decode(errors="ignore"):
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _stop_head(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_mentioning(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _pids_mentioning(temp_dir) and time.time() < deadline:
            time.sleep(0.2)


def test_ray_job_submit_runs_the_train_cli(tmp_path):
    gcs, dash, agent, grpc, metrics, rtenv = _free_ports(6)
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rjob")  # short: Ray's unix sockets live here
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The 2.60 dashboard here answers 401 without a token: give head and client the same one.
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    start = [str(BIN / "ray"), "start", "--head", "--num-cpus", "3", "--disable-usage-stats",
             "--include-dashboard=true", "--dashboard-host", "127.0.0.1",
             "--port", str(gcs), "--dashboard-port", str(dash),
             "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
             "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rtenv),
             "--temp-dir", temp_dir]
    try:
        st = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
        assert st.returncode == 0, (st.stdout[-3000:], st.stderr[-3000:])
        out = tmp_path / "runs"
        submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                  "--working-dir", ".", "--runtime-env-json",
                  json.dumps({"excludes": [".venv", "runs", ".git", "*.png"]}),
                  "--", "python", "-m", "tsal_dist.train", "--config", "configs/smoke.yaml",
                  "--output", str(out), "--name", "job", "--set", "run.export=false",
                  "--set", "optim.steps=6", "--set", "run.checkpoint_every=3"]
        r = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=500)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        assert "succeeded" in r.stdout.lower() + r.stderr.lower()
        assert '"ok": true' in r.stdout
        run_dir = out / "job"
        assert (run_dir / "checkpoints" / "ckpt-00000006.pt").is_file()
        assert set(json.loads((run_dir / "eval" / "summary.json").read_text())) == {
            "teacher", "student"}
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in rows if "student/loss" in x] == [3, 6]
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
