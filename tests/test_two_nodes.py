"""One run on two Ray nodes that share nothing but storage (tests/cluster.py builds them).

`ray job submit` runs the whole pipeline (data -> search -> tokenizer -> pretrain with one
worker on each node -> sft -> rl -> eval -> serve with the replica on the second node) with
the run's storage in S3 (moto on loopback), then with a folder bind-mounted into both nodes.
Every artifact must be in the storage, no node's local runs folder may hold a byte, and
the kept documents must equal a single-node run's. The negative control: a runs folder
that is local to each node fails at start with one line naming the node that cannot see it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from pyarrow.fs import FileSelector, FileType

from tests.cluster import S3Server, TwoNodeCluster
from tests.data.test_pipeline import SHORT
from tests.test_jobs import raylm

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = {"excludes": [".venv", "runs", ".git", "tests", "benchmarks", "*.pyc"]}
STEPS = ["data", "search", "tokenizer", "pretrain", "sft", "rl", "eval"]


def pipeline_args(storage: list[str], inputs: str, port: int) -> list[str]:
    """`raylm run` for two nodes: training workers one per node, the replica on node_b, a proxy on the head."""
    overrides = [*storage, f"data.input=[{inputs}]", *SHORT, "pretrain.placement_strategy=STRICT_SPREAD",
                 "sft.placement_strategy=STRICT_SPREAD", "serve.engine=torch", f"serve.port={port}",
                 "serve.host=127.0.0.1", "serve.proxy_location=HeadOnly", "serve.replica_resources={node_b: 1}",
                 "serve.replica_cpus=0.5"]
    return ["python", "jobs/run.py", "--name", "drill"] + [a for o in overrides for a in ("-o", o)]


def chat(port: int) -> dict:
    body = json.dumps({"model": "raylm", "messages": [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}],
                       "max_tokens": 8}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def replica_node(cluster: TwoNodeCluster) -> str:
    """The node id of the Serve replica, from the state API."""
    url = cluster.address + "/api/v0/actors?filter_keys=state&filter_predicates=%3D&filter_values=ALIVE&limit=1000"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        actors = json.load(response)["data"]["result"]["result"]
    return next(a["node_id"] for a in actors if "ChatServer" in a["class_name"])


def node_ids(cluster: TwoNodeCluster) -> dict[str, str]:
    return {n["node_ip"]: n["node_id"] for n in cluster.nodes()}


def local_bytes(cluster: TwoNodeCluster, folder: Path) -> list[str]:
    """Files in `folder` as the head sees it and as the worker node sees it (through its mount namespace)."""
    worker_view = Path(f"/proc/{cluster.worker.pid}/root") / folder.relative_to("/")
    return [str(p) for view in (folder, worker_view) for p in view.rglob("*") if p.is_file()]


def kept_ids(dataset) -> set[str]:
    return set(dataset.to_table(columns=["id"]).column("id").to_pylist())


@pytest.fixture(scope="module")
def single_node_kept(ray_session, sample_files, tmp_path_factory) -> set[str]:
    """The kept ids of the same input on the test session's one-node Ray."""
    from raylm.cli import main

    out = tmp_path_factory.mktemp("single") / "clean"
    assert main(["data", "--input", str(sample_files[3]), "--output", str(out)]) == 0
    return kept_ids(pads.dataset(str(out / "kept"), format="parquet"))


def test_pipeline_on_two_nodes_with_s3(single_node_kept, sample_files, tmp_path):
    local_runs = Path("/var/tmp") / f"raylm-drill-{tmp_path.name}"  # a folder each node has for itself
    with S3Server() as s3, TwoNodeCluster(head_cpus=2, worker_cpus=2, private_dirs=[local_runs], env=s3.env,
                                          object_store_memory=512 * 2**20) as cluster:
        fs = s3.filesystem()
        with fs.open_output_stream(f"{s3.bucket}/crawl/{sample_files[3].name}") as f:
            f.write(sample_files[3].read_bytes())

        # negative control: storage on each node's own disk is refused before any work, naming the node
        code, logs = cluster.submit(["python", "jobs/data.py", "-o", f"storage.uri={local_runs}"], ROOT,
                                    RUNTIME_ENV)
        assert code != 0 and f"storage {local_runs} is not shared with node {cluster.WORKER_IP}" in logs, logs[-3000:]
        assert "1/4 read + clean" not in logs
        code, logs = raylm(cluster.env, "cluster", "check", "--address", cluster.address, "-o", f"storage.uri={local_runs}")
        assert code == 1 and f"node {cluster.WORKER_IP}" in logs and "is not shared" in logs, logs[-3000:]

        port = cluster.gcs_port + 50  # in the block of ports the harness reserved, unused by either node
        storage = [f"storage.uri=s3://{s3.bucket}/runs", f"storage.endpoint_override=127.0.0.1:{s3.port}",
                   "storage.scheme=http", "storage.region=us-east-1"]
        code, logs = raylm(cluster.env, "cluster", "check", "--address", cluster.address,
                           *(a for o in storage for a in ("-o", o)))
        assert code == 0 and "[cluster check] 2 node(s): fit to run raylm" in logs, logs[-3000:]
        code, logs = cluster.submit(pipeline_args(storage, f"s3://{s3.bucket}/crawl/", port), ROOT, RUNTIME_ENV,
                                    timeout=1500)
        assert code == 0, logs[-5000:]
        assert "[ray] joined a cluster of 2 node(s)" in logs
        reply = chat(port)
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert replica_node(cluster) == node_ids(cluster)[cluster.WORKER_IP]

        stored = {info.path.split("/runs/drill/", 1)[1] for info in
                  fs.get_file_info(FileSelector(f"{s3.bucket}/runs", recursive=True)) if info.type == FileType.File}
        for step in STEPS:
            assert f"{step}/manifest.json" in stored, step
        for artifact in ("pretrain/hf/model.safetensors", "sft/hf/model.safetensors", "rl/hf/model.safetensors",
                         "search/search.db", "tokenizer/tokenizer.json", "serve/serve_config.yaml",
                         "eval/report.md", "data/stats.json"):
            assert artifact in stored, artifact
        assert any(p.startswith("ray_train/pretrain-") for p in stored) and any(p.startswith("rl_state/") for p in stored)
        assert not [p for p in stored if ".partial" in p or p.endswith(".lock")]
        assert local_bytes(cluster, local_runs) == []
        assert not [p for p in Path(cluster.root).rglob("runs") if any(p.iterdir())]

        kept = pads.dataset(f"{s3.bucket}/runs/drill/data/kept", format="parquet", filesystem=fs)
        assert kept_ids(kept) == single_node_kept


def test_pretraining_on_two_nodes_with_a_shared_folder(single_node_kept, sample_files, tmp_path):
    """The same with a folder mounted into both nodes (an NFS share on a real cluster): the data step, the
    tokenizer and pretraining with one Ray Train worker per node, every artifact in the shared folder."""
    shared, local_runs = tmp_path / "shared", Path("/var/tmp") / f"raylm-drill-{tmp_path.name}"
    (shared / "crawl").mkdir(parents=True)
    (shared / "crawl" / sample_files[3].name).write_bytes(sample_files[3].read_bytes())
    with TwoNodeCluster(head_cpus=2, worker_cpus=2, private_dirs=[local_runs], bind_dirs=[shared],
                        object_store_memory=512 * 2**20) as cluster:
        overrides = [f"storage.uri={shared}/runs", f"data.input=[{shared}/crawl]", *SHORT,
                     "pretrain.placement_strategy=STRICT_SPREAD"]
        args = " ".join(f"-o '{o}'" for o in overrides)
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
