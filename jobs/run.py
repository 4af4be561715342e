"""Ray job entry point for the whole pipeline (arguments: those of `raylm run`).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/run.py --config cluster --name NAME -o storage.uri=s3://bucket/runs

Every step runs in turn (finished ones are skipped), then the assistant is deployed on
Ray Serve; on a cluster the Serve app outlives the job (`serve shutdown` stops it).
"""

from _entry import run_step_job  # jobs/ is on sys.path when this file runs as a script

if __name__ == "__main__":
    run_step_job("run")
