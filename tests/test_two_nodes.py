"""One run on two Ray nodes that share nothing but storage (tests/cluster.py builds them), with faults.

The run's storage is S3 (moto on loopback). Each step goes in as a Ray job, and while it
works the second node is killed and replaced (as Kubernetes replaces a pod that died):
- the data step: its output equals an undisturbed single-node run's;
- pretraining (one Ray Train worker per node): it resumes from its last checkpoint and
  ends at the same step count;
- RL (an actor on each node): it restarts its actors and continues from its saved state;
- serving (a replica on each node): a client that retries as the openai client does sees
  no failed request.
Every artifact must be in the storage and no node's local runs folder may hold a byte;
`raylm cluster check` passes, and fails naming the node when the runs folder is local to
each node (the negative control), as does the pipeline itself. A second, shorter drill
keeps the run in a folder bind-mounted into both nodes (an NFS share on a real cluster).
Figures (recovery times, steps lost, failed requests) are printed for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from pyarrow.fs import FileSelector, FileType

from tests.cluster import S3Server, TwoNodeCluster, record
from tests.data.test_pipeline import SHORT
from tests.test_jobs import raylm

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = {"excludes": [".venv", "runs", ".git", "tests", "benchmarks", "*.pyc"]}
STEPS = ["data", "search", "tokenizer", "pretrain", "sft", "rl", "preferences", "reward", "rlhf", "eval"]
# one of each kind of actor per node: a node holds 2 CPUs, each of these asks for more than half
# pretraining is killed at its first registered checkpoint (step 10): 90 steps are left to absorb the delay
PRETRAIN_STEPS = 100
# training: two one-CPU workers (one per node), whatever the preset's layout
PLACEMENT = ["data.num_workers=2", "data.worker_cpus=1.5", "pretrain.placement_strategy=STRICT_SPREAD",
             "pretrain.num_workers=2", "pretrain.cpus_per_worker=1", "sft.num_workers=2", "sft.cpus_per_worker=1",
             f"pretrain.steps={PRETRAIN_STEPS}", "pretrain.checkpoint_every=10", f"pretrain.eval_every={PRETRAIN_STEPS}",
             "sft.placement_strategy=STRICT_SPREAD", "rl.steps=10", "rl.checkpoint_every=1", "rl.learner_cpus=1.5",
             "serve.engine=torch", "serve.host=127.0.0.1", "serve.proxy_location=HeadOnly", "serve.replica_cpus=1.5",
             "serve.autoscaling={min_replicas: 2, max_replicas: 2}"]


def overrides(*settings: str) -> list[str]:
    return [a for o in settings for a in ("-o", o)]


def chat(port: int) -> dict:
    body = json.dumps({"model": "raylm", "messages": [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}],
                       "max_tokens": 8}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def state_api(cluster: TwoNodeCluster, what: str) -> list[dict]:
    url = f"{cluster.address}/api/v0/{what}?filter_keys=state&filter_predicates=%3D&filter_values=ALIVE&limit=1000"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]["result"]["result"]


def replica_nodes(cluster: TwoNodeCluster) -> list[str]:
    return sorted(a["node_id"] for a in state_api(cluster, "actors") if "ChatServer" in a["class_name"])


def worker_node(cluster: TwoNodeCluster) -> str:
    return next(n["node_id"] for n in state_api(cluster, "nodes") if n["node_ip"] == cluster.WORKER_IP)


def local_bytes(cluster: TwoNodeCluster, folder: Path) -> list[str]:
    """Files in `folder` as the head sees it and as the worker node sees it (through its mount namespace)."""
    worker_view = Path(f"/proc/{cluster.worker.pid}/root") / folder.relative_to("/")
    return [str(p) for view in (folder, worker_view) for p in view.rglob("*") if p.is_file()]


def kept_ids(dataset) -> set[str]:
    return set(dataset.to_table(columns=["id"]).column("id").to_pylist())


def run_with_a_fault(cluster: TwoNodeCluster, entrypoint: list[str], ready, timeout: float = 900) -> tuple[str, float]:
    """Submit a job, replace the worker node once `ready(logs)` says the work is under way, wait for the job:
    returns its logs and how long the new node took to join."""
    job = cluster.submit_nowait(entrypoint, ROOT, RUNTIME_ENV)
    deadline, rejoin = time.time() + timeout, None
    while True:
        status, logs = cluster.job(job)
        if rejoin is None and status == "RUNNING" and ready(logs):
            rejoin = cluster.replace_worker()
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        assert time.time() < deadline, logs[-5000:]
        time.sleep(1)
    assert status == "SUCCEEDED" and rejoin is not None, f"{status}, fault injected: {rejoin is not None}\n{logs[-5000:]}"
    return logs, rejoin


class RetryingClient:
    """Requests in a loop, each retried on a connection error or a 5xx as the openai client does (2 retries
    with backoff); counts the requests that fail even so."""

    def __init__(self, port: int):
        from openai import OpenAI

        self.client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=2, timeout=60)
        self.sent = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.is_set() and self.sent < 2000:
            self.sent += 1
            try:
                self.client.chat.completions.create(model="raylm", max_tokens=8,
                                                    messages=[{"role": "user", "content": "What is your name?"}])
            except Exception:
                self.failed += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=120)


def test_pipeline_on_two_nodes_with_s3_and_faults(single_node_kept, sample_files, tmp_path):
    local_runs = Path("/var/tmp") / f"raylm-drill-{tmp_path.name}"  # a folder each node has for itself
    figures: dict = {}
    with S3Server() as s3, TwoNodeCluster(head_cpus=2, worker_cpus=2, private_dirs=[local_runs], env=s3.env,
                                          object_store_memory=512 * 2**20) as cluster:
        fs = s3.filesystem()
        with fs.open_output_stream(f"{s3.bucket}/crawl/{sample_files[3].name}") as f:
            f.write(sample_files[3].read_bytes())

        # negative controls: storage on each node's own disk is refused before any work, naming the node
        code, logs = cluster.submit(["python", "jobs/data.py", "-o", f"storage.uri={local_runs}"], ROOT, RUNTIME_ENV)
        assert code != 0 and f"storage {local_runs} is not shared with node {cluster.WORKER_IP}" in logs, logs[-3000:]
        assert "1/4 read + clean" not in logs
        code, logs = raylm(cluster.env, "cluster", "check", "--address", cluster.address, "-o", f"storage.uri={local_runs}")
        assert code == 1 and f"node {cluster.WORKER_IP}" in logs and "is not shared" in logs, logs[-3000:]

        port = cluster.gcs_port + 50  # in the block of ports the harness reserved, unused by either node
        storage = [f"storage.uri=s3://{s3.bucket}/runs", f"storage.endpoint_override=127.0.0.1:{s3.port}",
                   "storage.scheme=http", "storage.region=us-east-1"]
        code, logs = raylm(cluster.env, "cluster", "check", "--address", cluster.address, *overrides(*storage))
        assert code == 0 and "[cluster check] 2 node(s): fit to run raylm" in logs, logs[-3000:]

        args = overrides(*storage, f"data.input=[s3://{s3.bucket}/crawl/]", *SHORT, *PLACEMENT, f"serve.port={port}")
        job = lambda step: ["python", f"jobs/{step}.py", "--name", "drill", *args]  # noqa: E731
        runs = f"{s3.bucket}/runs/drill"

        def stored(under: str = "") -> set[str]:
            infos = fs.get_file_info(FileSelector(f"{runs}/{under}".rstrip("/"), recursive=True, allow_not_found=True))
            return {i.path.split("/runs/drill/", 1)[1] for i in infos if i.type == FileType.File}

        logs, figures["data_rejoin_s"] = run_with_a_fault(cluster, job("data"), lambda logs: "1/4 read + clean" in logs)
        assert "[ray] joined a cluster of 2 node(s)" in logs
        assert kept_ids(pads.dataset(f"{runs}/data/kept", format="parquet", filesystem=fs)) == single_node_kept

        logs, figures["pretrain_rejoin_s"] = run_with_a_fault(
            cluster, ["bash", "-c", " && ".join(" ".join(f"'{w}'" for w in job(s)) for s in ("search", "tokenizer", "pretrain"))],
            # a checkpoint is registered (Ray Train writes its checkpoint manager's snapshot then; a checkpoint
            # folder alone may still be uploading, and a kill then restarts from step 0)
            lambda logs: any(p.startswith("ray_train/pretrain-") and p.endswith("/checkpoint_manager_snapshot.json")
                             for p in stored("ray_train")))
        history = json.loads(fs.open_input_stream(f"{runs}/pretrain/history.json").read())
        restored = [m["restored_from"] for m in history if m["restored_from"] is not None]
        # resumed from a checkpoint, ended where it should
        assert restored and history[-1]["step"] == PRETRAIN_STEPS, (history[-3:], logs[-5000:])
        figures["pretrain_restored_from"] = restored[0]
        before = logs.split("restored from checkpoint")[0]  # the steps logged before the failure
        logged = [int(x.split("/")[0]) for x in re.findall(r"\[pretrain\] step (\d+/\d+)", before)]
        figures["pretrain_steps_lost"] = max(logged, default=restored[0]) - restored[0]

        logs, figures["rl_rejoin_s"] = run_with_a_fault(
            cluster, ["bash", "-c", " && ".join(" ".join(f"'{w}'" for w in job(s)) for s in ("sft", "rl"))],
            lambda logs: any(p.startswith("rl_state/") for p in stored("rl_state")) and "[rl] step" in logs)
        rl = json.loads(fs.open_input_stream(f"{runs}/rl/manifest.json").read())["metrics"]
        assert rl["actor_failures"] >= 1 and rl["restored_from"] >= 1 and rl["final"]["step"] == 10, rl
        figures["rl_restored_from"] = rl["restored_from"]

        code, logs = cluster.submit(job("run"), ROOT, RUNTIME_ENV, timeout=900)  # eval, then serve
        assert code == 0 and logs.count("already finished") == 6, logs[-5000:]
        assert chat(port)["choices"][0]["message"]["role"] == "assistant"
        assert len(set(replica_nodes(cluster))) == 2  # one replica on each node
        with RetryingClient(port) as client:
            time.sleep(5)
            figures["serve_rejoin_s"] = cluster.replace_worker()
            time.sleep(10)
        figures["serve_requests"], figures["serve_failed_requests"] = client.sent, client.failed
        assert client.sent > 20 and client.failed == 0, figures

        files = stored()
        for step in STEPS:
            assert f"{step}/manifest.json" in files, step
        for artifact in ("pretrain/hf/model.safetensors", "sft/hf/model.safetensors", "rl/hf/model.safetensors",
                         "search/search.db", "tokenizer/tokenizer.json", "serve/serve_config.yaml",
                         "eval/report.md", "data/stats.json"):
            assert artifact in files, artifact
        assert any(p.startswith("ray_train/pretrain-") for p in files) and any(p.startswith("rl_state/") for p in files)
        assert not [p for p in files if ".partial" in p or p.endswith(".lock")]
        assert local_bytes(cluster, local_runs) == []
        assert not [p for p in Path(cluster.root).rglob("runs") if any(p.iterdir())]
    print(f"\n[drill] {json.dumps(figures)}")
    record(ROOT / "benchmarks" / "out" / "cluster_drills.json", "faults", figures)


def test_pretraining_on_two_nodes_with_a_shared_folder(single_node_kept, sample_files, tmp_path):
    """The same with a folder mounted into both nodes (an NFS share on a real cluster): the data step, the
    tokenizer and pretraining with one Ray Train worker per node, every artifact in the shared folder."""
    shared, local_runs = tmp_path / "shared", Path("/var/tmp") / f"raylm-drill-{tmp_path.name}"
    (shared / "crawl").mkdir(parents=True)
    (shared / "crawl" / sample_files[3].name).write_bytes(sample_files[3].read_bytes())
    with TwoNodeCluster(head_cpus=2, worker_cpus=2, private_dirs=[local_runs], bind_dirs=[shared],
                        object_store_memory=512 * 2**20) as cluster:
        args = " ".join(f"'{a}'" for a in overrides(f"storage.uri={shared}/runs", f"data.input=[{shared}/crawl]",
                                                    *SHORT, "pretrain.placement_strategy=STRICT_SPREAD"))
        steps = " && ".join(f"python jobs/{step}.py --name drill {args}" for step in ("data", "tokenizer", "pretrain"))
        code, logs = cluster.submit(["bash", "-c", steps], ROOT, RUNTIME_ENV, timeout=900)
        assert code == 0, logs[-5000:]
        assert "[ray] joined a cluster of 2 node(s)" in logs
        assert "node_rank=1" in logs  # the second Ray Train worker ran on the other node
        run = shared / "runs" / "drill"
        for step in ("data", "tokenizer", "pretrain"):
            assert (run / step / "manifest.json").is_file(), step
        assert (run / "pretrain" / "hf" / "model.safetensors").is_file() and list(run.glob("ray_train/pretrain-*"))
        assert local_bytes(cluster, local_runs) == []
        assert kept_ids(pads.dataset(str(run / "data" / "kept"), format="parquet")) == single_node_kept
