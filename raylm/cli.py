"""The `raylm` command: one sub-command per step, plus `run` for every step end to end.

    raylm data --input raylm/sample/crawl --output /tmp/clean
    raylm run                                  # all steps, tiny preset, runs/tiny/
    raylm run --config cluster -o data.num_workers=64

Every sub-command takes `--config PRESET_OR_FILE` (presets in raylm/configs/) and
any number of `-o key.path=value` overrides; `raylm config` prints the result.
Step outputs live in runs/<name>/<step>/ with a manifest.json; a rerun skips
finished steps. Errors a user can fix print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from raylm.config import ConfigError, RunConfig, load_config
from raylm.runs import run_step

STEPS = ["data"]  # in pipeline order; each later issue appends its step


def init_ray(cfg: RunConfig) -> None:
    """Join the cluster named in the config or by RAY_ADDRESS (ray job submit), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.ray.address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=True)


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / cfg.name


def step_data(cfg: RunConfig, output: Path | None = None):
    from raylm.data.pipeline import run_data

    step_dir = output or run_dir(cfg) / "data"
    init_ray(cfg)
    return run_step("data", step_dir, cfg.data.model_dump(), lambda work: run_data(cfg.data, work),
                    inputs={"input": ", ".join(cfg.data.input)})


def cmd_config(cfg: RunConfig, args) -> None:
    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")


def cmd_data(cfg: RunConfig, args) -> None:
    if args.input:
        cfg.data.input = args.input
    step_data(cfg, Path(args.output) if args.output else None)


def cmd_run(cfg: RunConfig, args) -> None:
    print(f"raylm run '{cfg.name}': steps {' -> '.join(STEPS)} in {run_dir(cfg)}")
    step_data(cfg)
    print(f"raylm run '{cfg.name}': done; artifacts in {run_dir(cfg)}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default="tiny",
                        help="preset name (tiny, cluster) or path to a YAML file (default: tiny)")
    common.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, repeatable, e.g. -o data.filters.language_threshold=0.7")
    common.add_argument("--name", help="run name: artifacts go to runs/<name>/ (default: the preset's name)")

    parser = argparse.ArgumentParser(prog="raylm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", parents=[common], help="print the resolved config").set_defaults(fn=cmd_config)

    data = sub.add_parser("data", parents=[common], help="crawl -> clean, deduplicated corpus (Ray Data)")
    data.add_argument("--input", nargs="+", metavar="PATH",
                      help="WARC/WARC.gz, JSONL or parquet files or folders (default: config data.input)")
    data.add_argument("--output", metavar="DIR", help="output folder (default: runs/<name>/data)")
    data.set_defaults(fn=cmd_data)

    sub.add_parser("run", parents=[common], help="every step end to end, resuming finished ones"
                   ).set_defaults(fn=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from raylm.data.readers import InputError

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.override)
        if args.name:
            cfg.name = args.name
        args.fn(cfg, args)
    except (ConfigError, InputError) as err:
        print(f"raylm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
