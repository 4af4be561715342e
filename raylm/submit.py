"""`raylm submit` and `raylm jobs`: run raylm's steps on a remote Ray cluster through its Job Submission API.

    raylm submit --address http://HEAD:8265 run --config cluster --name big -o storage.uri=s3://bucket/runs
    raylm submit --address http://HEAD:8265 --no-wait pretrain --config cluster --name big
    raylm jobs list | raylm jobs logs JOB_ID [--follow] | raylm jobs stop JOB_ID

The address is the head's dashboard (or RAY_ADDRESS); with token auth, RAY_AUTH_MODE=token
and RAY_AUTH_TOKEN in the environment sign every request. `submit` uploads this checkout
as the job's working dir (without runs/, .venv, .git, tests, benchmarks: what a job does
not need), runs `python jobs/<step>.py ARGS...` there, streams its log as it comes, and
exits with the job's outcome (0 only if it SUCCEEDED), so scripts and CI can chain steps.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path

from raylm.errors import InputError

ROOT = Path(__file__).resolve().parents[1]  # the checkout: raylm/, jobs/, pyproject.toml
EXCLUDES = ["runs/", ".venv/", ".git/", "tests/", "benchmarks/", "cluster/", "*.pyc", "__pycache__/"]


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address or not address.startswith(("http://", "https://")):
        raise InputError("give the head's dashboard address: --address http://HEAD:8265 (or set RAY_ADDRESS)")
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as err:
        raise InputError(f"no Ray job server at {address}: {str(err).splitlines()[0]}") from None


def submit(address: str | None, step: str, args: list[str], wait: bool = True) -> int:
    """Submit `python jobs/<step>.py ARGS` with this checkout as working dir; returns the exit code to use."""
    if not (ROOT / "jobs" / f"{step}.py").is_file():
        known = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if not p.stem.startswith("_"))
        raise InputError(f"no job entry point for '{step}' (known: {', '.join(known)})")
    jobs = client(address)
    entrypoint = shlex.join(["python", f"jobs/{step}.py", *args])
    job_id = jobs.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES})
    print(f"[submit] job {job_id}: {entrypoint}", flush=True)
    if not wait:
        print(f"[submit] follow it with: raylm jobs logs {job_id} --follow", flush=True)
        return 0
    return follow(jobs, job_id)


def follow(jobs, job_id: str) -> int:
    """Stream the job's log until it ends; 0 if it succeeded, 1 otherwise."""
    async def stream() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(stream())
    status = str(jobs.get_job_status(job_id).value)
    print(f"[submit] job {job_id} {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def list_jobs(address: str | None) -> int:
    rows = sorted(client(address).list_jobs(), key=lambda j: j.start_time or 0)
    print(f"{'job':<36} {'status':<10} entrypoint")
    for job in rows:
        print(f"{job.submission_id or job.job_id:<36} {str(job.status.value):<10} {job.entrypoint}")
    return 0


def logs(address: str | None, job_id: str, follow_log: bool = False) -> int:
    jobs = client(address)
    if follow_log:
        return follow(jobs, job_id)
    sys.stdout.write(jobs.get_job_logs(job_id))
    return 0


def stop(address: str | None, job_id: str) -> int:
    stopped = client(address).stop_job(job_id)
    print(f"[jobs] {job_id}: {'stop requested' if stopped else 'not running'}")
    return 0
