"""Shared start of the job entry points: put the uploaded working dir's raylm first, run one step.

Inside a Ray job, RAY_ADDRESS is set, so raylm joins the cluster instead of
starting a local Ray, and checks that every node reaches the run's storage
(`-o storage.uri=s3://bucket/runs` or a folder mounted on every node): a job's
working dir is temporary and private to the head, so the default `runs` folder
would be lost with it.
"""

import sys
from pathlib import Path


def run_step_job(step: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from raylm.cli import main

    sys.exit(main([step, *sys.argv[1:]]))
