"""The `raylm` command: one sub-command per step of the graph (raylm/steps.py), plus `run` for all of them.

    raylm data --input raylm/sample/crawl --output /tmp/clean
    raylm run                                  # every step, tiny preset, runs/tiny/, then serves
    raylm run -o storage.uri=s3://bucket/runs -o storage.endpoint_override=minio:9000
    raylm run --config cluster -o data.num_workers=64
    raylm sample --checkpoint runs/tiny/pretrain/hf --prompt "The package manager"
    raylm eval --checkpoint runs/tiny/pretrain/hf runs/tiny/sft/hf --json /tmp/eval.json
    raylm chat --checkpoint runs/tiny/sft/hf
    raylm serve [--checkpoint runs/tiny/rl/hf] [--port 8000]   # OpenAI-compatible API + chat page
    raylm label [--port 8001] | raylm label --export prefs.jsonl | raylm label --import pairs.jsonl
    raylm submit --address http://HEAD:8265 run --config cluster --name big   # a Ray job on a cluster
    raylm jobs list | raylm jobs logs ID --follow | raylm cluster check --address http://HEAD:8265

Every sub-command takes `--config PRESET_OR_FILE` (presets in raylm/configs/) and
any number of `-o key.path=value` overrides; `raylm config` prints the result.
A run lives in <storage.uri>/<name>/<step>/ with a manifest.json per step; a rerun
skips finished steps whose config and upstream steps did not change. Errors a user
can fix print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from raylm.config import ConfigError, RunConfig, load_config
from raylm.errors import InputError
from raylm.ray_setup import init_ray, on_cluster
from raylm.runs import hold_lock
from raylm.steps import GRAPH, Run
from raylm.storage import Storage

PIPELINE = ["data", "search", "tokenizer", "pretrain", "sft", "rl", "preferences", "reward", "rlhf", "eval"]  # `run` order; then it serves


def new_run(cfg: RunConfig) -> Run:
    return Run(cfg, on_work=lambda: init_ray(cfg))


def storage_at(cfg: RunConfig, uri: str) -> Storage:
    """A path or URI given on the command line, opened with the run's storage options (S3 endpoint...)."""
    return Storage(cfg.storage.model_copy(update={"uri": uri}))


def cmd_config(cfg: RunConfig, args) -> None:
    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")


def cmd_step(cfg: RunConfig, args) -> None:
    run = new_run(cfg)
    with run.lock():
        result = run.execute(args.command)
    print(f"[{args.command}] {result.step_dir}")


def cmd_data(cfg: RunConfig, args) -> None:
    if args.input:
        cfg.data.input = args.input
    if not args.output:
        return cmd_step(cfg, args)
    parent, _, name = args.output.rstrip("/").rpartition("/")
    out = storage_at(cfg, parent if "://" in args.output else str(Path(args.output).resolve().parent))
    name = name if "://" in args.output else Path(args.output).resolve().name
    with hold_lock(out, f"{name}.lock"):
        new_run(cfg).execute("data", at=(out, name))


def cmd_eval(cfg: RunConfig, args) -> None:
    """With --checkpoint: those folders side by side; without: the run's eval step (base vs SFT [vs RL])."""
    from raylm.eval.capability import evaluate_many
    from raylm.eval.report import report_text, write_report

    if args.seed is not None:
        cfg.eval.seed = args.seed
    run = new_run(cfg)
    if not args.checkpoint:
        with run.lock():
            step = run.execute("eval")
        print(f"eval table: {step.storage.uri(step.rel + '/report.md')}")
        if args.json:
            Path(args.json).write_text(step.storage.read_text(f"{step.rel}/results.json"))
        return
    checkpoints = [storage_at(cfg, c) for c in args.checkpoint]
    for checkpoint in checkpoints:
        if not checkpoint.is_file("config.json"):
            raise InputError(f"no HF checkpoint (config.json) in {checkpoint.uri()}")
    if len(checkpoints) > 1:
        init_ray(cfg)
    results = evaluate_many(checkpoints, cfg.eval, _val_shards(run, checkpoints), cfg.pretrain.seq_len)
    if args.output:
        print(write_report(results, Path(args.output), args.json))
        return
    print(report_text(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def _val_shards(run: Run, checkpoints: list[Storage]) -> list[Storage] | None:
    """The run's pretraining val shards for eval's bits per byte, if every checkpoint uses the run's tokenizer."""
    tokenizer = run.result("tokenizer")
    if tokenizer is None:
        return None
    ours = tokenizer.storage.read_bytes(f"{tokenizer.rel}/tokenizer.json")
    if any(c.read_bytes("tokenizer.json") != ours for c in checkpoints):
        return None
    return [tokenizer.storage.child(f"{tokenizer.rel}/shards/{s}")
            for s in tokenizer.metrics["shards"]["val"]["shards"]]


def search_index(run: Run) -> Storage | None:
    """The run's search index (the `search` step), built from the finished data step if it is not there yet."""
    result = run.result("search")
    if result is None and run.finished("data"):
        with run.lock():
            result = run.execute("search")
    return result.storage.child(f"{result.rel}/search.db") if result else None


def cmd_chat(cfg: RunConfig, args) -> None:
    from raylm.chat import chat_loop

    checkpoint = storage_at(cfg, args.checkpoint)
    if not checkpoint.is_file("config.json"):
        raise InputError(f"no HF checkpoint (config.json) in {checkpoint.uri()}")
    search = storage_at(cfg, args.search_db) if args.search_db else search_index(new_run(cfg))
    chat_loop(checkpoint.local(""), system=args.system, search_db=search.local("") if search else None,
              temperature=args.temperature, max_tokens=args.max_tokens)


def final_checkpoint(run: Run) -> Storage:
    """The run's finished assistant: the RL model, else the SFT model."""
    for step in ("rl", "sft"):
        result = run.result(step)
        if result is not None:
            return result.storage.child(f"{result.rel}/hf")
    raise InputError(f"no finished sft or rl step in {run.storage.uri(run.cfg.name)}; "
                     f"pass --checkpoint or run `raylm run` first")


def refuse_busy_machine(host: str, port: int) -> None:
    """A local start fails at once, naming who is in the way: the port's holder, or engines of an earlier
    raylm server that are still alive (they hold gigabytes and a core: the new engine would starve)."""
    from raylm.serve.lifecycle import leftover_engines, port_holder

    if holder := port_holder(host, port):
        raise InputError(f"port {port} on {host} is taken by {holder}: stop it or pass --port")
    if left := leftover_engines():
        pids = " ".join(str(p.pid) for p in left)
        raise InputError(f"an earlier raylm server's engine processes are still running (pids {pids}, "
                         f"{sum(p.memory_info().rss for p in left) / 2**30:.1f} GiB): `kill {pids}` first")


def serve_model(cfg: RunConfig, checkpoint: Storage, port: int | None = None) -> None:
    """Deploy on Ray Serve and print how to query it. A local Ray serves until Ctrl-C; on a cluster the app
    outlives this process (`serve shutdown` stops it)."""
    from raylm.serve.deploy import deploy, how_to_query, write_serve_config
    from raylm.serve.lifecycle import LocalRayProcesses

    if not checkpoint.is_file("config.json"):
        raise InputError(f"no HF checkpoint (config.json) in {checkpoint.uri()}")
    run = new_run(cfg)
    search_db = None
    if "search" in cfg.serve.tools:
        search_db = storage_at(cfg, cfg.serve.search_db) if cfg.serve.search_db else search_index(run)
        if search_db is None or not search_db.is_file(""):
            print("[serve] no search index (run the data step or set serve.search_db): search is off", flush=True)
            search_db = None
    config_file = write_serve_config(cfg.serve, checkpoint, search_db, run.storage,
                                     f"{cfg.name}/serve/serve_config.yaml")
    if on_cluster(cfg):
        if os.environ.get(cfg.serve.api_key_env) is not None and not cfg.serve.api_key_file:
            print(f"[serve] note: ${cfg.serve.api_key_env} of this shell does not reach the cluster's replicas; "
                  f"they read their key from their pods (serve.api_key_file, cluster/secrets.yaml)", flush=True)
        init_ray(cfg)
        url = deploy(cfg.serve, checkpoint, search_db, port, local=False)
        print(how_to_query(url, cfg.serve))
        print(f"  cluster:    serve deploy {config_file}", flush=True)
        print("[serve] deployed on the cluster; it keeps serving after this job ends (`serve shutdown` stops it)")
        return
    refuse_busy_machine(cfg.serve.host, port or cfg.serve.port)
    processes, code = LocalRayProcesses(), 0
    arm_stop_signals()
    try:
        init_ray(cfg)
        arm_stop_signals()  # Ray's driver installs a SIGTERM handler of its own: ours again
        url = deploy(cfg.serve, checkpoint, search_db, port)
        print(how_to_query(url, cfg.serve))
        print(f"  cluster:    serve deploy {config_file}", flush=True)
        print("[serve] Ctrl-C stops the server", flush=True)
        while True:
            time.sleep(1)
            if not processes.raylet_alive():  # `ray stop`, a killed raylet: nothing left to serve with
                break
        print("[serve] Ray's raylet is gone: stopping", flush=True)
        code = 1
    except (KeyboardInterrupt, SystemExit):
        print("\n[serve] shutting down", flush=True)
    except Exception as err:  # the deployment failed: its processes must not outlive this one either
        print(f"raylm serve: error: {err}", file=sys.stderr, flush=True)
        code = 1
    stop_local_server(processes, code)


def arm_stop_signals() -> None:
    """SIGTERM (a process manager, `kill`) stops the server as cleanly as Ctrl-C; SIGINT is re-armed because a
    shell that starts a program in the background makes it ignore SIGINT."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_local_server(processes, code: int) -> None:
    """Serve's own shutdown (replicas stop their engines), bounded: with the raylet or GCS hit by the same
    signal it can hang; then every process of this local Ray that still runs is killed, and this process
    exits at once (Ray's exit hooks would wait on the Ray just ended)."""
    import threading

    import ray
    from ray import serve

    from raylm.serve.deploy import remove_private_key_files

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the cleanup short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if ray.is_initialized() and processes.raylet_alive():  # with the raylet gone there is no Serve to ask
        stopper = threading.Thread(target=serve.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=20)
    if killed := processes.kill_all():  # Ray's own (raylet, GCS, agents) and whatever a signal left behind
        print(f"[serve] local Ray stopped ({killed} processes)", flush=True)
    remove_private_key_files()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_serve(cfg: RunConfig, args) -> None:
    if args.engine:
        cfg.serve.engine = args.engine
    checkpoint = storage_at(cfg, args.checkpoint) if args.checkpoint else final_checkpoint(new_run(cfg))
    serve_model(cfg, checkpoint, args.port)


def cmd_label(cfg: RunConfig, args) -> int:
    """The labeling page over the run's label database until Ctrl-C; or --export / --import TRL JSONL."""
    from raylm.rlhf.labels import LabelStore, label_database_url, shown_url

    url = label_database_url(cfg)
    try:
        store = LabelStore(url)
        if args.export:
            print(f"[label] {store.export_trl(args.export)} preference pairs written to {args.export} (TRL)")
            return 0
        if args.import_file:
            print(f"[label] {store.import_pairs(args.import_file)} pairs imported into {shown_url(url)}")
            return 0
    except (ValueError, OSError) as err:  # a bad line, a missing file: one line for the user
        raise InputError(str(err)) from None
    waiting, total = store.count_open(cfg.preferences.overlap), store.count_items()
    if not waiting:
        held = f"all {total} items in it are ranked or flagged" if total else "it holds no items"
        print(f"raylm label: nothing to label in {shown_url(url)} ({held}): run `raylm preferences` first",
              file=sys.stderr)
        return 1
    if args.port:
        cfg.preferences.port = args.port
    print(f"[label] {waiting} of {total} items wait for labels in {shown_url(url)}", flush=True)
    from raylm.rlhf.label_app import serve_label_page  # Ray and Serve: only when a page is served

    return serve_label_page(cfg, url)


def cmd_sweep(cfg: RunConfig, args) -> None:
    from raylm.train.tune import run_sweep

    run = new_run(cfg)
    tokenizer = run.result("tokenizer")
    if tokenizer is None:
        raise InputError("the tokenizer step has not finished (or is out of date): run `raylm tokenizer` first")
    init_ray(cfg)
    run_sweep(cfg.pretrain, tokenizer, f"{cfg.name}/ray_tune",
              [float(x) for x in args.lrs.split(",")], [int(x) for x in args.batch_sizes.split(",")])


def cmd_sample(cfg: RunConfig, args) -> None:
    from raylm.model.engine import Engine
    from raylm.model.hf import load_pretrained
    from raylm.tokenizer.bpe import EOS, load

    checkpoint = storage_at(cfg, args.checkpoint)
    if not checkpoint.is_file("config.json"):
        raise InputError(f"no HF checkpoint (config.json) in {checkpoint.uri()}")
    folder = checkpoint.local("")
    tok = load(folder)
    eos = tok.token_to_id(EOS)
    engine = Engine(load_pretrained(folder))
    prompt = [eos, *tok.encode(args.prompt).ids]
    print(args.prompt, end="", flush=True)
    for token in engine.stream(prompt, args.max_tokens, args.temperature, args.top_k, args.top_p,
                               stop_ids=(eos,), seed=args.seed):
        print(tok.decode([token]), end="", flush=True)
    print()


def cmd_submit(cfg: RunConfig, args) -> int:
    from raylm.submit import submit

    return submit(args.address, args.step, args.args, wait=not args.no_wait)


def cmd_jobs(cfg: RunConfig, args) -> int:
    from raylm import submit

    if args.action == "list":
        return submit.list_jobs(args.address)
    if not args.job_id:
        raise InputError(f"raylm jobs {args.action} needs a job id (raylm jobs list shows them)")
    if args.action == "logs":
        return submit.logs(args.address, args.job_id, args.follow)
    return submit.stop(args.address, args.job_id)


def cmd_cluster(cfg: RunConfig, args) -> int:
    """`raylm cluster check`: in a job on the cluster (with --address), or here when this process is on it."""
    from raylm.preflight import check_cluster
    from raylm.submit import submit

    if args.address:
        forwarded = ["--config", args.config, *(a for o in args.override for a in ("-o", o))]
        return submit(args.address, "cluster_check", forwarded + (["--name", args.name] if args.name else []))
    if not on_cluster(cfg):
        raise InputError("raylm cluster check needs a cluster: --address http://HEAD:8265, or run it on the head")
    import ray

    ray.init(address=cfg.ray.address, log_to_driver=False)
    problems = check_cluster(cfg)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    for problem in problems:
        print(f"[cluster check] {problem}")
    print(f"[cluster check] {nodes} node(s): " + ("fit to run raylm" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def cmd_run(cfg: RunConfig, args) -> None:
    run = new_run(cfg)
    print(f"raylm run '{cfg.name}': steps {' -> '.join(PIPELINE)} in {run.storage.uri(cfg.name)}")
    with run.lock():
        for step in PIPELINE:
            run.execute(step)
    final = final_checkpoint(run)
    print(f"raylm run '{cfg.name}': done; base model in {run.storage.uri(run.rel('pretrain') + '/hf')}, "
          f"assistant in {final.uri()}, eval table in {run.storage.uri(run.rel('eval') + '/report.md')}")
    if args.no_serve:
        print(f"  try: raylm serve --checkpoint {final.uri()}   (or raylm chat --checkpoint ...)")
        return
    serve_model(cfg, final)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default="tiny",
                        help="preset name (tiny, cluster) or path to a YAML file (default: tiny)")
    common.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, repeatable, e.g. -o data.filters.language_threshold=0.7")
    common.add_argument("--name", help="run name: artifacts go to <storage.uri>/<name>/ (default: the preset's)")

    parser = argparse.ArgumentParser(prog="raylm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", parents=[common], help="print the resolved config").set_defaults(fn=cmd_config)

    steps = {name: sub.add_parser(name, parents=[common], help=step.help) for name, step in GRAPH.items()}
    for step in steps.values():
        step.set_defaults(fn=cmd_step)
    steps["data"].add_argument("--input", nargs="+", metavar="PATH",
                               help="WARC/WARC.gz, JSONL or parquet files or folders, local or s3://..., or a "
                               "Common Crawl warc.paths(.gz) listing (default: config data.input)")
    steps["data"].add_argument("--output", metavar="DIR", help="output folder or URI (default: <run>/data)")
    steps["data"].set_defaults(fn=cmd_data)
    evaluate = steps["eval"]
    evaluate.add_argument("--checkpoint", nargs="+", metavar="PATH",
                          help="HF folders to compare (default: the run's pretrain, sft and rl checkpoints)")
    evaluate.add_argument("--seed", type=int, help="seed of the held-out tasks (default: config eval.seed)")
    evaluate.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    evaluate.add_argument("--output", metavar="DIR", help="write report.md, results.json, chart.png there")
    evaluate.set_defaults(fn=cmd_eval)

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
    label = sub.add_parser("label", parents=[common], help="rank sampled answers on a web page (RLHF labels)")
    label.add_argument("--port", type=int, help="HTTP port of the page (default: config preferences.port, 8001)")
    once = label.add_mutually_exclusive_group()
    once.add_argument("--export", metavar="FILE", help="write the preference pairs as TRL JSONL, no server")
    once.add_argument("--import", dest="import_file", metavar="FILE",
                      help="add chosen/rejected JSONL pairs (TRL or plain strings) as ranked items, no server")
    label.set_defaults(fn=cmd_label)
    run = sub.add_parser("run", parents=[common], help="every step end to end, resuming finished ones; then serves")
    run.add_argument("--no-serve", action="store_true", help="stop after the eval step instead of serving")
    run.set_defaults(fn=cmd_run)

    address = argparse.ArgumentParser(add_help=False)
    address.add_argument("--address", help="the head's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    submit = sub.add_parser("submit", parents=[address], help="run a step (or run) on a cluster as a Ray job",
                            description="raylm submit [--address URL] [--no-wait] STEP [ARGS...]: uploads this "
                            "checkout (without runs/ and .venv), streams the job's log, exits with its outcome")
    submit.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    submit.add_argument("step", help="a step, run, serve or cluster_check (the files in jobs/)")
    submit.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, as for `raylm STEP`")
    submit.set_defaults(fn=cmd_submit, config="tiny", override=[], name=None)
    jobs = sub.add_parser("jobs", parents=[address], help="list, read or stop jobs on a cluster")
    jobs.add_argument("action", choices=["list", "logs", "stop"])
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--follow", action="store_true", help="logs: stream until the job ends (exit code: its outcome)")
    jobs.set_defaults(fn=cmd_jobs, config="tiny", override=[], name=None)
    cluster = sub.add_parser("cluster", parents=[common, address],
                             help="check that a live cluster can run raylm: versions, storage, GPUs, auth")
    cluster.add_argument("action", choices=["check"])
    cluster.set_defaults(fn=cmd_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.override)
        if args.name:
            cfg.name = args.name
        code = args.fn(cfg, args)
    except (ConfigError, InputError) as err:
        print(f"raylm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
