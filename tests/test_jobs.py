"""jobs/data.py submitted with the Job Submission API to a real Ray head on loopback."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPICS = [
    "Rivers shape the land they cross. Over thousands of years, water carries sand and stones from the mountains "
    "to the sea, cutting valleys and building deltas. Farmers have always settled near rivers, because the soil "
    "there is rich. Cities grew along their banks, and boats carried goods between them. Floods remain a danger, "
    "but they also renew the fields.",
    "Bread is one of the oldest prepared foods. Early bakers mixed ground grain with water and cooked the paste on "
    "hot stones. Later, people learned that wild yeast makes dough rise and gives it a lighter texture. Every "
    "region developed its own loaves, from flat breads to dark rye. Today most bread is baked in large factories.",
    "A lighthouse warns ships away from rocks and shallow water. The first ones were simple fires lit on hills near "
    "busy harbours. Later towers used oil lamps and polished mirrors to throw the light further out to sea. Keepers "
    "lived in small houses at the foot of the tower and trimmed the wicks each night. Most lights now run alone.",
    "Chess began in India more than a thousand years ago and spread west along trade routes. The rules changed as "
    "the game travelled, and the queen became the strongest piece only in the fifteenth century. Players study "
    "openings, tactics and endgames for years. Computers now play better than any human, yet people still enjoy "
    "the game. Clubs meet in almost every town.",
]


@pytest.fixture
def ray_head():
    """`ray start --head --block` in its own process group; SIGTERM stops exactly this head.

    (`ray stop` would also kill the test session's own Ray.) RAY_TMPDIR is short
    because Ray's unix sockets live under it. The head uses token authentication,
    as a cluster should; the client gets the same token from the environment.
    """
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            # a job's `python` is the head's: this venv's, as a cluster image would have it
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    dashboard = "http://127.0.0.1:8275"
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port=6390", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--dashboard-port=8275",
         "--disable-usage-stats", "--min-worker-port=20000", "--max-worker-port=20999",
         # the test session's own Ray holds the default agent ports on this machine
         "--dashboard-agent-listen-port=52395", "--dashboard-agent-grpc-port=52396",
         "--runtime-env-agent-port=52397", "--metrics-export-port=52398"],
        env={**os.environ, **auth, "RAY_TMPDIR": tmp}, start_new_session=True,
        stdout=open(Path(tmp) / "head.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(dashboard + "/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # answering, if only to ask for Ray's auth token
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, (Path(tmp) / "head.log").read_text()[-3000:]
                time.sleep(1)
        yield dashboard, {**os.environ, **auth}
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:  # `ray start --block` never exits on SIGTERM alone (it waited out 30 s here every time)
                head.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def raylm(env, *args, timeout=600) -> tuple[int, str]:
    """The `raylm` command in its own process (Ray caches the auth token per process, and this test
    process already holds the test session's local Ray)."""
    run = subprocess.run([str(Path(sys.executable).parent / "raylm"), *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    return run.returncode, run.stdout + run.stderr


def submit_when_ready(env, *args) -> tuple[int, str]:
    for _ in range(30):  # the head's job agent comes up a few seconds after its HTTP server
        code, logs = raylm(env, "submit", *args)
        if "No available agent" not in logs:
            return code, logs
        time.sleep(2)
    return code, logs


def test_submit_jobs_and_cluster_check_on_a_real_head(ray_head, tmp_path):
    """`raylm submit` uploads the checkout, streams the job's log and exits with its outcome; `raylm jobs`
    lists, reads and stops jobs; `raylm cluster check` passes on a head with token auth."""
    address, env = ray_head
    inputs = tmp_path / "docs.jsonl"
    docs = [{"url": f"https://topics.example/{i}", "text": text} for i, text in enumerate(TOPICS)]
    docs.append({"url": "https://topics.example/copy", "text": TOPICS[0]})
    inputs.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    out = tmp_path / "clean"

    code, logs = submit_when_ready(env, "--address", address, "data", "--input", str(inputs), "--output", str(out),
                                   "-o", "data.num_workers=1")
    assert code == 0, logs[-3000:]
    assert "[data] kept 4 of 5 records" in logs and "SUCCEEDED" in logs  # streamed while it ran
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept_documents"] == 4 and stats["removed_by_reason"] == {"exact_dedup/exact_duplicate": 1}
    job_id = logs.split("[submit] job ", 1)[1].split(":", 1)[0]

    code, listing = raylm(env, "jobs", "list", "--address", address)
    assert code == 0 and any(job_id in line and "SUCCEEDED" in line for line in listing.splitlines())
    code, job_log = raylm(env, "jobs", "logs", job_id, "--address", address)
    assert code == 0 and "[data] kept 4 of 5 records" in job_log

    code, logs = raylm(env, "submit", "--address", address, "data", "--input", str(tmp_path / "missing"))
    assert code == 1 and "input path not found" in logs and "FAILED" in logs  # the job's outcome is the exit code

    code, logs = raylm(env, "submit", "--address", address, "--no-wait", "pretrain", "--name", "never")
    stopped = logs.split("[submit] job ", 1)[1].split(":", 1)[0]
    assert raylm(env, "jobs", "stop", stopped, "--address", address)[0] == 0
    code, logs = raylm(env, "jobs", "logs", stopped, "--follow", "--address", address)
    assert code == 1 and ("STOPPED" in logs or "FAILED" in logs)

    code, logs = raylm(env, "cluster", "check", "--address", address, "-o", f"storage.uri={tmp_path / 'runs'}")
    assert code == 0, logs[-3000:]
    assert "[cluster check] 1 node(s): fit to run raylm" in logs
