"""Ray job entry point for the pretrain step.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/pretrain.py --config cluster --name NAME

Arguments are those of `raylm pretrain`; the run directory (runs_dir) must be storage
that the head and the workers share. Inside a job, RAY_ADDRESS is set, so raylm
joins the cluster instead of starting a local Ray.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir's raylm wins

from raylm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
