"""Ray job entry point for the cluster preflight (arguments: those of `raylm cluster check`).

    raylm cluster check --address http://HEAD:8265 --config cluster     # submits this file, streams its result
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from raylm.cli import main

    sys.exit(main(["cluster", "check", *sys.argv[1:]]))
