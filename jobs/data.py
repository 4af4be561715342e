"""Ray job entry point for the data step (arguments: those of `raylm data`).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/data.py --config cluster --input s3://bucket/crawl/ --output s3://bucket/clean/
"""

from _entry import run_step_job  # jobs/ is on sys.path when this file runs as a script

if __name__ == "__main__":
    run_step_job("data")
