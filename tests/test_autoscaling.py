"""Ray's autoscaler (v2) grows and shrinks raylm's cluster (cluster/raycluster.yaml) under raylm's work.

tests/autoscaling.py builds the cluster: the manifest's node types, scaled down, on Ray's
fake multi-node provider (each node a real raylet on this machine), a head of 0 CPUs.

1. The data step, submitted as a Ray job from zero workers, asks for more CPUs than the
   head has (none): the `cpu` group grows, the job succeeds with the same kept documents
   as a plain local run, and the group shrinks back to zero after the idle timeout.
2. A Serve deployment whose replicas only fit on `cpu` nodes autoscales under concurrent
   HTTP load: a second replica starts, a second node for it, and both go away once the
   load stops.

Each drill writes its timings to benchmarks/out/autoscaling.json (a list of runs per drill).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from tests.autoscaling import ROOT, FakeCluster
from tests.cluster import record

pytestmark = pytest.mark.slow
RESULTS = ROOT / "benchmarks" / "out" / "cluster_drills.json"
RUNTIME_ENV = {"excludes": [".venv", "runs", ".git", "tests", "benchmarks", "*.pyc"]}
IDLE_TIMEOUT_S = 20  # the manifest's 300 s, scaled down: long enough to keep nodes between a job's stages
SAMPLE = "raylm/sample/crawl/sample-00003.warc.gz"  # the input of the single_node_kept fixture
# two cleaning actors of one CPU each, plus their read tasks: more CPUs than one `cpu` node (2) offers
DATA_ARGS = ["--input", SAMPLE, "-o", "data.num_workers=2", "-o", "data.worker_cpus=1", "-o", "data.batch_size=256"]


def kept_ids(folder: Path) -> set[str]:
    return set(pads.dataset(str(folder / "kept"), format="parquet").to_table(columns=["id"]).column("id").to_pylist())


def test_data_step_grows_the_cpu_group_from_zero_and_it_shrinks_back(single_node_kept, tmp_path):
    with FakeCluster(idle_timeout_s=IDLE_TIMEOUT_S) as cluster:
        assert cluster.samples[-1][1] == {"cpu": 0, "gpu": 0}  # no workers: the head alone, 0 CPUs
        out = tmp_path / "clean"
        submitted = time.time()
        job = cluster.submit(["python", "jobs/data.py", *DATA_ARGS, "--output", str(out),
                              "-o", f"storage.uri={tmp_path}/runs"], ROOT, RUNTIME_ENV)
        first_up = cluster.wait(lambda n: n["cpu"] + n["gpu"] >= 1, timeout=300, what="a worker node")
        status = cluster.wait_job(job, timeout=900)
        logs = cluster.job_logs(job)
        assert status == "SUCCEEDED", logs[-5000:]
        info = cluster.client().get_job_info(job)
        ended = info.end_time / 1000
        at_zero = cluster.wait(lambda n: n == {"cpu": 0, "gpu": 0}, timeout=IDLE_TIMEOUT_S + 120,
                               what="every group at zero")
        first = next(n for t, n in cluster.samples if t >= first_up)
        peak, peak_gpu = cluster.peak("cpu", since=submitted), cluster.peak("gpu", since=submitted)

    # The first node is a cpu node: autoscaler v2 prefers nodes without GPUs for CPU work. Ray Data asks
    # for more CPUs than two cpu nodes have, so the gpu group may follow once the cpu group is at its max.
    assert first["cpu"] >= 1 and first["gpu"] == 0, first
    assert peak >= 1
    assert "[ray] joined a cluster of" in logs and "kept " in logs
    assert kept_ids(out) == single_node_kept  # as on a plain one-node Ray
    record(RESULTS, "data_step", {
        "submit_to_first_cpu_node_s": round(first_up - submitted, 1),
        "peak_cpu_nodes": peak,
        "peak_gpu_nodes": peak_gpu,
        "job_duration_s": round((info.end_time - info.start_time) / 1000, 1),
        "job_end_to_zero_nodes_s": round(at_zero - ended, 1),
        "idle_timeout_s": IDLE_TIMEOUT_S,
    })


# The job that deploys raylm's chat server (raylm.serve.app.ChatServer, torch engine) with raylm's own
# deployment options (raylm.serve.deploy) on `gpu` nodes: one replica per node. Only Serve's timing
# knobs change: by default it waits 30 s to scale up and 600 s to scale down, averaging over 30 s.
DEPLOY = '''
import sys

import ray
from ray import serve

from raylm.config import ServeConfig, StorageConfig
from raylm.serve.app import ChatServer
from raylm.serve.deploy import APP_NAME, app_args, deployment_options
from raylm.storage import Storage

checkpoint, port = sys.argv[1], int(sys.argv[2])
settings = ServeConfig(engine="torch", host="127.0.0.1", port=port, proxy_location="HeadOnly", tools=["calculator"],
                       replica_cpus=1, replica_gpus=1,
                       autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1})
options = deployment_options(settings)
options["autoscaling_config"].update(upscale_delay_s=2, downscale_delay_s=10, look_back_period_s=5)
options["ray_actor_options"]["runtime_env"] = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
args = app_args(settings, Storage(StorageConfig(uri=checkpoint)), None)
ray.init()
serve.start(http_options={"host": settings.host, "port": port}, proxy_location=settings.proxy_location)
serve.run(ChatServer.options(**options).bind(args["checkpoint"], args["settings"], None, args["storage"]),
          name=APP_NAME, route_prefix="/", blocking=False)
print("[deploy] running", flush=True)
'''
# Serve's replicas and proxy report their load every 10 s by default; every second here
SERVE_ENV = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
             "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


def tiny_checkpoint(folder: Path) -> Path:
    """A random GPT (2 layers, dim 64) with a small BPE: what matters here is the replica, not the replies."""
    from raylm.model.gpt import GPT, GPTConfig
    from raylm.model.hf import save_pretrained
    from raylm.tasks import generate_tasks
    from raylm.tokenizer.bpe import save, train_bpe

    texts = [str(t.conversation()) for t in generate_tasks({"identity": 40, "compare": 40}, 0)]
    tok = train_bpe(texts, vocab_size=600, min_frequency=1)
    save(tok, folder / "tok")
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), dim=64, n_layers=2, n_heads=2, n_kv_heads=1,
                          max_seq_len=256))
    return save_pretrained(model, folder / "hf", folder / "tok", chat=True)


def chat(port: int) -> bool:
    """One chat completion of up to 48 tokens; True if it came back."""
    body = json.dumps({"model": "raylm", "messages": [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}],
                       "max_tokens": 48}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["choices"][0]["message"]["role"] == "assistant"
    except OSError:
        return False


class Load:
    """`clients` threads sending chat requests back to back until stop() (or `limit_s`)."""

    def __init__(self, port: int, clients: int = 4, limit_s: float = 300):
        self.port, self.started, self.ok, self.failed = port, time.time(), 0, 0
        self.deadline = self.started + limit_s
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        while not self.stopping.is_set() and time.time() < self.deadline:
            if chat(self.port):
                self.ok += 1
            else:
                self.failed += 1

    def stop(self) -> float:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=90)
        return time.time()


def until(condition, timeout: float, what: str) -> float:
    """Polls condition() every 0.5 s; returns the time it first held."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.5)
    return time.time()


def test_serve_autoscaling_adds_a_replica_and_a_gpu_node_under_load_and_both_go_away(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "model")
    (tmp_path / "deploy.py").write_text(DEPLOY)
    with FakeCluster(idle_timeout_s=IDLE_TIMEOUT_S, env=SERVE_ENV) as cluster:
        running = lambda: [r for r in cluster.replicas("raylm", "ChatServer") if r["state"] == "RUNNING"]  # noqa: E731
        submitted = time.time()
        job = cluster.submit(["python", str(tmp_path / "deploy.py"), str(checkpoint), str(cluster.serve_port)],
                             ROOT, RUNTIME_ENV)
        first_node = cluster.wait(lambda n: n["gpu"] >= 1, timeout=300, what="a gpu node for the first replica")
        status = cluster.wait_job(job, timeout=600)
        assert status == "SUCCEEDED", cluster.job_logs(job)[-5000:]
        deployed = time.time()
        assert len(running()) == 1 and chat(cluster.serve_port)
        assert cluster.samples[-1][1] == {"cpu": 0, "gpu": 1}

        load = Load(cluster.serve_port)
        second_node = cluster.wait(lambda n: n["gpu"] == 2, timeout=300, what="a second gpu node")
        second_replica = until(lambda: len(running()) == 2, timeout=300, what="a second replica")
        nodes = {r["node_id"] for r in running()}
        stopped = load.stop()
        one_replica = until(lambda: len(running()) == 1, timeout=120, what="back to one replica")
        one_node = cluster.wait(lambda n: n["gpu"] == 1, timeout=IDLE_TIMEOUT_S + 120, what="back to one gpu node")
        peak = cluster.peak("gpu", since=submitted)
        assert cluster.peak("cpu", since=submitted) == 0  # replicas need a GPU: the cpu group stays at zero
        assert chat(cluster.serve_port)  # the remaining replica still answers

    assert len(nodes) == 2 and peak == 2
    assert load.ok > 0 and load.failed == 0
    record(RESULTS, "serve", {
        "deploy_to_first_gpu_node_s": round(first_node - submitted, 1),
        "deploy_job_s": round(deployed - submitted, 1),
        "load_to_second_gpu_node_s": round(second_node - load.started, 1),
        "load_to_second_replica_s": round(second_replica - load.started, 1),
        "peak_gpu_nodes": peak,
        "load_stop_to_one_replica_s": round(one_replica - stopped, 1),
        "load_stop_to_one_gpu_node_s": round(one_node - stopped, 1),
        "requests_ok": load.ok,
        "idle_timeout_s": IDLE_TIMEOUT_S,
    })
