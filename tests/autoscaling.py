"""An autoscaling Ray cluster on one machine, shaped like cluster/raycluster.yaml (KubeRay).

KubeRay cannot run here, so Ray's fake multi-node provider stands in for Kubernetes:
the autoscaler (v2, as the manifest asks) runs in the head's monitor process, and
each node it "launches" is a real raylet started on this machine
(ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider).

The node types come from the manifest through Ray's own KubeRay translation
(`_derive_autoscaling_config_from_ray_cr`, what the autoscaler in a KubeRay pod
runs on the RayCluster), then scaled down to this machine (`autoscaling_config`):

    headgroup (num-cpus "0")       -> ray.head.default {CPU: 0}  (schedules no work)
    cpu  {CPU: 32}, max 20         -> cpu {CPU: 2}, max 2
    gpu  {CPU: 64, GPU: 8}, max 2  -> gpu {CPU: 1, GPU: 1}, max 2  (a fake GPU: a resource)
    idleTimeoutSeconds 300         -> idle_timeout_s (10 by default)
    upscalingMode Default          -> upscaling_speed 1000, as Ray maps it

Start: `ray start --head --block --autoscaling-config=<root>/autoscaling.yaml` in its
own process group, with RAY_FAKE_CLUSTER=1, RAY_enable_autoscaler_v2=1, the head's
fake node id (RAY_OVERRIDE_NODE_ID_FOR_TESTING, RAY_CLOUD_INSTANCE_ID), a 1 s
autoscaler loop (AUTOSCALER_UPDATE_INTERVAL_S) and RAY_TMPDIR under a fresh root in
/tmp. Every port the head opens is explicit, from one free block (tests/cluster.py),
the dashboard (Job Submission API) on 127.0.0.1; the fake nodes' ports are picked
by Ray. Teardown SIGTERMs the head's process group, then SIGKILLs every process of
the cluster still there: those whose environment carries this cluster's marker
(the monitor hands its environment to the raylets it starts, and they to their
workers), whose command line names the root (the session dir), and their
descendants. It never runs `ray stop`, which would hit every Ray on the machine.

    with FakeCluster() as cluster:
        job = cluster.submit(["python", "jobs/data.py", ...], working_dir=ROOT)
        assert cluster.wait_job(job) == "SUCCEEDED"
        cluster.wait(lambda n: n["cpu"] == 0, timeout=120)
    cluster.samples  # (seconds since start, {node type: alive nodes}) every ~0.5 s
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from unittest import mock

import yaml
from ray._private import parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

from tests.cluster import (BIN, MARKER, _answers, _free_port_block, _listens, _wait, cluster_pids, common_env,
                           kill_until_gone)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cluster" / "raycluster.yaml"
HEAD_TYPE = "ray.head.default"  # the type FakeMultiNodeProvider gives its head node
GIB = 2**30

# Run by the sampler process (arguments: the GCS address, the worker node types): every 0.5 s, one JSON
# line with the time and the alive (running or idle) nodes per type that the autoscaler v2 reports.
SAMPLER = """
import json, sys, time
from ray.autoscaler.v2.sdk import get_cluster_status
address, types = sys.argv[1], sys.argv[2:]
while True:
    try:
        status = get_cluster_status(address, timeout=10)
    except Exception:  # the GCS, or the autoscaler's first report, is not there yet
        time.sleep(0.5)
        continue
    nodes = dict.fromkeys(types, 0)
    for node in status.active_nodes + status.idle_nodes:
        if node.ray_node_type_name in nodes:
            nodes[node.ray_node_type_name] += 1
    print(json.dumps({"t": time.time(), "nodes": nodes}), flush=True)
    time.sleep(0.5)
"""


def autoscaling_config(manifest: Path = MANIFEST, *, gcs_address: str, idle_timeout_s: float = 10,
                       max_workers: int = 2, cpus_per_node: int = 2, object_store_memory: int = GIB // 4) -> dict:
    """The autoscaler config of the manifest's RayCluster, for the fake provider on this machine.

    Ray's KubeRay translation gives the node types (resources from the containers' limits and
    rayStartParams, min/max replicas), the idle timeout and the upscaling speed. Then, scaled
    down: a GPU group's node gets {CPU: 1, GPU: 1}, any other group's {CPU: cpus_per_node};
    at most `max_workers` nodes per group; memory is dropped (the fake raylets share this
    machine's); the head keeps its CPUs (0) and its place as the only non-worker type.
    """
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cluster = yaml.safe_load(manifest.read_text())
    cluster["metadata"].setdefault("namespace", "default")  # the translation wants one; it has no say here
    config = _derive_autoscaling_config_from_ray_cr(cluster)
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    head["resources"] = {"CPU": head["resources"]["CPU"]}
    types[HEAD_TYPE] = head
    for node_type in types.values():
        if node_type is head:
            continue
        big = node_type["resources"]
        node_type["resources"] = {"CPU": 1, "GPU": 1} if big.get("GPU") else {"CPU": cpus_per_node}
        node_type["resources"]["object_store_memory"] = object_store_memory  # the provider passes it to the raylet
        node_type["max_workers"] = min(node_type["max_workers"], max_workers)
        node_type["min_workers"] = min(node_type["min_workers"], node_type["max_workers"])
    config.update({
        "head_node_type": HEAD_TYPE,
        "max_workers": sum(t["max_workers"] for t in types.values()),
        "idle_timeout_minutes": idle_timeout_s / 60,
        # the fake provider, as Ray's AutoscalingCluster sets it up for autoscaler v2; named as an
        # "external" module because type "fake_multinode" loads defaults from an example.yaml that
        # the wheel does not ship
        "provider": {"type": "external", "module": f"{__name__}.Provider",
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "launch_multiple": True,
                     "head_node_id": FAKE_HEAD_NODE_ID, "gcs_address": gcs_address},
    })
    return config


class Provider(FakeMultiNodeProvider):
    """Ray's FakeMultiNodeProvider, but each node unpacks runtime envs into a folder of its own.

    Fake nodes share the head's session dir, so by default they share one runtime_resources
    folder: a node coming up re-creates a job's working_dir there while another node's workers
    run in it, and those lose their current directory (torch's MKL then dies on import: "Cannot
    load libtorch_cpu.so"). On KubeRay every pod has its own disk; a folder per node says the same.
    """

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        original = parameter.RayParams

        def params(**kwargs):
            node_id = kwargs["env_vars"]["RAY_OVERRIDE_NODE_ID_FOR_TESTING"]
            return original(**kwargs, runtime_env_dir_name=f"runtime_resources_{node_id[-5:]}")

        with mock.patch.object(parameter, "RayParams", params):  # the provider builds the node's RayParams
            super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)


class FakeCluster:
    """A head of 0 CPUs whose autoscaler adds `cpu` and `gpu` nodes; see the module docstring."""

    # base + 0..19 the head's ports, base + 100..249 its worker processes (job drivers, Serve's actors)
    PORTS = 250

    def __init__(self, manifest: Path = MANIFEST, *, idle_timeout_s: float = 10, start_timeout: float = 180,
                 env: dict | None = None, **shape):
        self.manifest, self.idle_timeout_s, self.shape = manifest, idle_timeout_s, shape
        self.start_timeout = start_timeout
        self.extra_env = dict(env or {})
        self.head: subprocess.Popen | None = None
        self.sampler: subprocess.Popen | None = None
        self.samples: list[tuple[float, dict[str, int]]] = []

    def __enter__(self) -> FakeCluster:
        import ray._private.services

        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        # short: Ray's unix sockets live under RAY_TMPDIR (a 107-byte path limit)
        self.root = tempfile.mkdtemp(prefix="as", dir="/tmp")
        self.token = secrets.token_hex(32)  # token auth, as the manifest's authOptions asks
        base = _free_port_block(self.PORTS)
        self.gcs_port, self.dashboard_port, self.serve_port = base, base + 1, base + 10
        # the address Ray picks for a node it starts without --node-ip-address, as the fake nodes are
        self.ip = ray._private.services.node_ip_address_from_perspective()
        self.gcs_address = f"{self.ip}:{self.gcs_port}"
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.config = autoscaling_config(self.manifest, gcs_address=self.gcs_address,
                                         idle_timeout_s=self.idle_timeout_s, **self.shape)
        Path(self.root, "autoscaling.yaml").write_text(yaml.safe_dump(self.config))
        head_cpus = self.config["available_node_types"][HEAD_TYPE]["resources"]["CPU"]
        command = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                   f"--autoscaling-config={self.root}/autoscaling.yaml", f"--node-ip-address={self.ip}",
                   f"--num-cpus={head_cpus}", f"--object-store-memory={GIB // 4}", f"--port={self.gcs_port}",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                   f"--node-manager-port={base + 2}", f"--object-manager-port={base + 3}",
                   f"--dashboard-agent-listen-port={base + 4}", f"--dashboard-agent-grpc-port={base + 5}",
                   f"--runtime-env-agent-port={base + 6}", f"--metrics-export-port={base + 7}",
                   f"--ray-client-server-port={base + 8}",
                   f"--min-worker-port={base + 100}", f"--max-worker-port={base + 249}"]
        env = {**self._client_env(), "RAY_TMPDIR": f"{self.root}/t",
               # the autoscaler (the head's monitor process) imports Provider from this module
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "TMPDIR": self.root, MARKER: self.root,
               "RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": "1",
               "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID, "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
               "AUTOSCALER_UPDATE_INTERVAL_S": "1",  # Ray's default is 5 s: faster reactions, shorter drills
               "AUTOSCALER_METRIC_PORT": str(base + 9)}  # default 44217: two such clusters would collide
        log = Path(self.root, "head.log")
        try:
            with log.open("w") as out:
                self.head = subprocess.Popen(command, env=env, start_new_session=True, stdout=out,
                                             stderr=subprocess.STDOUT)
            _wait(lambda: _listens(self.gcs_port) and _answers(self.address + "/api/version"), self.head, log,
                  self.start_timeout)
            # the sampler: a client of its own (Ray caches the auth token per process, and this one may hold
            # another Ray), printing what the autoscaler reports, as `ray status` shows it
            types = [t for t in self.config["available_node_types"] if t != HEAD_TYPE]
            self.sampler = subprocess.Popen([str(BIN / "python"), "-c", SAMPLER, self.gcs_address, *types],
                                            env={**self.env, MARKER: self.root}, start_new_session=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._sample, daemon=True).start()
            _wait(lambda: bool(self.samples), self.head, log, self.start_timeout)  # the autoscaler reports
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _client_env(self) -> dict[str, str]:
        return common_env(self.token, self.extra_env)

    @property
    def env(self) -> dict[str, str]:
        """For a client subprocess: the auth token, and the Job Submission API's address as RAY_ADDRESS."""
        return {**self._client_env(), "RAY_ADDRESS": self.address}

    # --- what the autoscaler sees -------------------------------------------------------------------

    def _sample(self) -> None:
        """Reads the sampler's lines: one per ~0.5 s, the autoscaler's alive nodes per type."""
        for line in self.sampler.stdout:
            if line.startswith("{"):
                sample = json.loads(line)
                self.samples.append((sample["t"], sample["nodes"]))

    def wait(self, condition, timeout: float, what: str = "") -> float:
        """Until condition(node counts) holds in a sample; returns that sample's time."""
        deadline, seen = time.time() + timeout, len(self.samples)
        while time.time() < deadline:
            for stamp, counts in self.samples[seen:]:
                if condition(counts):
                    return stamp
            seen = len(self.samples)
            if self.head.poll() is not None:
                raise RuntimeError(f"the head died:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        last = self.samples[-1][1] if self.samples else None
        raise TimeoutError(f"{what or condition} not within {timeout} s; nodes now {last}\n{self.monitor_log()}")

    def peak(self, node_type: str, since: float = 0, until: float = float("inf")) -> int:
        return max((c[node_type] for t, c in self.samples if since <= t <= until), default=0)

    # --- jobs ---------------------------------------------------------------------------------------

    def client(self):
        from ray.job_submission import JobSubmissionClient

        # plain HTTP to the dashboard, the token given here: no Ray client state in this process
        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})

    def submit(self, entrypoint: list[str], working_dir: Path, runtime_env: dict | None = None) -> str:
        import shlex

        return self.client().submit_job(entrypoint=shlex.join(entrypoint),
                                        runtime_env={"working_dir": str(working_dir), **(runtime_env or {})})

    def wait_job(self, job_id: str, timeout: float = 600) -> str:
        """Until the job ends; returns its status (SUCCEEDED, FAILED, STOPPED)."""
        client, deadline = self.client(), time.time() + timeout
        while (status := str(client.get_job_status(job_id).value)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            if time.time() > deadline:
                client.stop_job(job_id)
                raise TimeoutError(f"job {job_id} still {status} after {timeout} s:\n{self.job_logs(job_id)[-3000:]}")
            time.sleep(0.5)
        return status

    def job_logs(self, job_id: str) -> str:
        return self.client().get_job_logs(job_id)

    def replicas(self, app: str, deployment: str) -> list[dict]:
        """The Serve deployment's replicas (state, node_id, ...) from the dashboard's Serve API."""
        request = urllib.request.Request(self.address + "/api/serve/applications/",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            apps = json.load(response).get("applications", {})
        return apps.get(app, {}).get("deployments", {}).get(deployment, {}).get("replicas", [])

    # --- logs and teardown --------------------------------------------------------------------------

    def log(self) -> str:
        return Path(self.root, "head.log").read_text(errors="replace")

    def monitor_log(self, lines: int = 30) -> str:
        """The autoscaler's last lines (session_latest/logs/monitor.log), for failure messages."""
        path = Path(self.root, "t", "ray", "session_latest", "logs", "monitor.log")
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def pids(self) -> dict[int, str]:
        """Every live process of this cluster (pid: start time): the head's group, the fake nodes' raylets
        and everything they started (marked by the environment or by the session dir on the command line)."""
        return cluster_pids({self.head.pid} if self.head is not None and self.head.poll() is None else set(),
                            self.root)

    def close(self, grace: float = 3) -> None:
        """SIGTERM the head's group, and after `grace` seconds SIGKILL every process of the cluster still there."""
        doomed = self.pids()  # first: once the monitor dies, the fake raylets no longer descend from the head
        if self.sampler is not None and self.sampler.poll() is None:
            self.sampler.kill()
        if self.head is not None and self.head.poll() is None:
            os.killpg(self.head.pid, signal.SIGTERM)
            try:
                self.head.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        kill_until_gone(doomed, self.pids)
        for proc in (self.sampler, self.head):
            if proc is not None:
                proc.wait(timeout=10)  # reap them
        shutil.rmtree(self.root, ignore_errors=True)

