"""Ray job entry point for the rlhf step (arguments: those of `raylm rlhf`).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/rlhf.py --config cluster --name NAME
"""

from _entry import run_step_job  # jobs/ is on sys.path when this file runs as a script

if __name__ == "__main__":
    run_step_job("rlhf")
