"""Ray job entry point for the eval step (arguments: those of `raylm eval`).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/eval.py --config cluster --name NAME [--checkpoint PATH ...] [--json FILE]
"""

from _entry import run_step_job  # jobs/ is on sys.path when this file runs as a script

if __name__ == "__main__":
    run_step_job("eval")
