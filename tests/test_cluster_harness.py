"""The harness in tests/cluster.py builds what it claims: two Ray nodes that share S3 and the
bound folder, and no disk."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from pyarrow.fs import FileSelector

from tests.cluster import S3Server, TwoNodeCluster, _alive

# Runs on the head as a Ray job; every check is an assert, so the job's exit code is the verdict.
PROBE = '''
import json
from pathlib import Path

import ray
from pyarrow import fs
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

cfg = json.loads(Path("config.json").read_text())
tag, bucket = cfg["tag"], cfg["bucket"]


def here():
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
def write(name):
    """A file on this node's /tmp and runs folder, and an object in the shared bucket."""
    for folder in ("/tmp", cfg["runs"]):
        Path(folder, f"{tag}-{name}.txt").write_text(name)
    with fs.S3FileSystem(**cfg["s3"]).open_output_stream(f"{bucket}/{tag}/{name}.txt") as f:
        f.write(name.encode())
    return here()


@ray.remote(num_cpus=0)
def check(name, other):
    """Own files are here, the other node's are not; the bucket and the bound folder are shared."""
    for folder in ("/tmp", cfg["runs"]):
        assert Path(folder, f"{tag}-{name}.txt").read_text() == name
        assert not Path(folder, f"{tag}-{other}.txt").exists(), f"{other}'s file in {folder} is visible on {name}"
    with fs.S3FileSystem(**cfg["s3"]).open_input_stream(f"{bucket}/{tag}/{other}.txt") as f:
        assert f.read() == other.encode()
    assert Path(cfg["shared"], f"{tag}-driver.txt").read_text() == "from the head"
    Path(cfg["shared"], f"{tag}-{name}.txt").write_text(name)
    return here()


ray.init()
alive = [node for node in ray.nodes() if node["Alive"]]
assert len(alive) == 2, alive
head = here()
Path(cfg["shared"], f"{tag}-driver.txt").write_text("from the head")

# pinned by the custom resource each node offers
ids = ray.get([write.options(resources={"node_a": 1}).remote("node_a"),
               write.options(resources={"node_b": 1}).remote("node_b")])
assert ids[0] == head and ids[1] != head and set(ids) == {n["NodeID"] for n in alive}, (ids, head)

# pinned by node id
pin = [NodeAffinitySchedulingStrategy(node_id, soft=False) for node_id in ids]
checked = ray.get([check.options(scheduling_strategy=pin[0]).remote("node_a", "node_b"),
                   check.options(scheduling_strategy=pin[1]).remote("node_b", "node_a")])
assert checked == ids, (checked, ids)
assert Path(cfg["shared"], f"{tag}-node_b.txt").read_text() == "node_b"  # the worker's write, seen on the head
print(f"CLUSTER HARNESS OK head={ids[0]} worker={ids[1]}")
'''


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the worker node's mount namespace needs root")
def test_two_nodes_share_storage_and_nothing_else(tmp_path):
    tag = uuid.uuid4().hex[:12]
    # Outside /tmp, so only the private_dirs mount hides it from the worker; shared sits under /tmp,
    # which the worker's tmpfs covers, so only the bind mount makes it visible there.
    runs = Path(tempfile.mkdtemp(prefix="raylm-runs-", dir="/var/tmp"))
    shared = tmp_path / "shared"
    shared.mkdir()
    job = tmp_path / "job"
    job.mkdir()
    (job / "probe.py").write_text(PROBE)
    host_tmp = [Path(f"/tmp/{tag}-node_a.txt"), Path(f"/tmp/{tag}-node_b.txt")]
    try:
        with S3Server() as s3, TwoNodeCluster(head_resources={"node_a": 1}, worker_resources={"node_b": 1},
                                              private_dirs=[runs], bind_dirs=[shared], env=s3.env) as cluster:
            (job / "config.json").write_text(json.dumps(
                {"tag": tag, "bucket": s3.bucket, "s3": s3.options, "runs": str(runs), "shared": str(shared)}))
            nodes = cluster.nodes()
            assert sorted(n["node_ip"] for n in nodes) == [cluster.HEAD_IP, cluster.WORKER_IP]

            code, logs = cluster.submit(["python", "probe.py"], working_dir=job, timeout=180)
            assert code == 0, logs[-4000:]
            assert "CLUSTER HARNESS OK" in logs, logs[-4000:]

            # Seen from the host: the head's files are on its disk, the worker's are on the worker's
            # tmpfs only (the host reaches that through the worker's /proc/<pid>/root).
            assert host_tmp[0].read_text() == "node_a" and not host_tmp[1].exists()
            assert (runs / f"{tag}-node_a.txt").exists() and not (runs / f"{tag}-node_b.txt").exists()
            worker_root = Path(f"/proc/{cluster.worker.pid}/root")
            assert (worker_root / f"tmp/{tag}-node_b.txt").read_text() == "node_b"
            assert (worker_root / str(runs).lstrip("/") / f"{tag}-node_b.txt").read_text() == "node_b"
            assert (shared / f"{tag}-node_b.txt").read_text() == "node_b"
            objects = s3.filesystem().get_file_info(FileSelector(f"{s3.bucket}/{tag}"))
            assert sorted(i.path for i in objects) == [f"{s3.bucket}/{tag}/node_{x}.txt" for x in "ab"]

            # The worker node's Ray processes all live in its namespace, and the harness knows them all.
            on_worker = cluster.worker_pids()
            names = {_read(Path(f"/proc/{pid}/comm")).strip() for pid in on_worker}
            assert "raylet" in names, names
            unknown = set(on_worker) - set(cluster.pids())
            assert not _alive({pid: on_worker[pid] for pid in unknown})  # idle Ray workers may exit meanwhile
            everything = cluster.pids()

        # Teardown left nothing: no process of the cluster, no mount on the host.
        assert not _alive(everything)
        leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and cluster.root in _read(p / "cmdline")]
        assert not leftovers
        assert str(runs) not in Path("/proc/self/mountinfo").read_text()
        assert not Path(cluster.root).exists()
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        for path in host_tmp:
            path.unlink(missing_ok=True)


def _read(path: Path) -> str:
    """A /proc file, or "" for a process that is gone."""
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""
