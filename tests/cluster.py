"""A real two-node Ray cluster on one machine whose nodes share nothing but storage.

Topology (loopback only; one address per node, as on two machines):

    S3Server     moto's S3 server in its own process on 127.0.0.1:<free port>, with one
                 bucket: the storage both nodes share.
    head node    `ray start --head --block` at 127.0.0.2 with token auth and the dashboard
                 (Job Submission API) on 127.0.0.1; RAY_TMPDIR and TMPDIR in a fresh
                 folder under the host's /tmp. Job drivers run here.
    worker node  `ray start --address=<head> --block` at 127.0.0.3, started as

                     unshare -m --propagation private sh -c '
                         mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /dev/shm &&
                         mkdir -p DIR && mount -t tmpfs tmpfs DIR && ... &&
                         mount --no-canonicalize --bind /proc/self/fd/N SHARED && ... &&
                         exec ray start ...'

                 so it and every process it starts (raylet, agents, workers) see their
                 own empty /tmp, /dev/shm and `private_dirs`: what the head writes there
                 is not on the worker's "disk", and vice versa. Each `bind_dirs` folder
                 is opened before the tmpfs mounts hide it and bound back at its own
                 path afterwards, so it stays shared even under a private tmpfs.

Every port either node opens is explicit and distinct, from one free block in
21000-32399 (below the kernel's ephemeral range, away from Ray's defaults), so the
nodes never collide with each other or with any other Ray on the machine. Teardown
SIGTERMs each node's process group, then SIGKILLs every process of the cluster still
there: the nodes' descendants, and orphans that carry the cluster's marker in their
environment (job drivers start their own sessions). It never runs `ray stop`, which
would hit every Ray on the machine.

Usage:

    with S3Server() as s3, TwoNodeCluster(private_dirs=[runs], env=s3.env) as cluster:
        code, logs = cluster.submit(["python", "job.py"], working_dir=folder)
        assert code == 0, logs

Clients run as subprocesses with `cluster.env` (or, like `nodes()`, as plain HTTP):
Ray caches the auth token per process, and a test process may hold its own Ray.
The host can read a worker node's private files at /proc/<worker pid>/root/...
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent  # `ray` and `python` of this venv, as a cluster image would have them
MARKER = "RAYLM_TEST_CLUSTER"  # in every cluster process's environment, to find them all at teardown


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))  # all addresses: taken if anyone listens on any of them
            return True
        except OSError:
            return False


def _free_port_block(size: int) -> int:
    for _ in range(100):
        base = random.randrange(21000, 32400 - size, 10)
        if all(_port_free(port) for port in range(base, base + size)):
            return base
    raise RuntimeError(f"no {size} free ports in a row between 21000 and 32400")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:  # an answer too, if only to ask for the auth token
        pass
    except OSError:
        return False
    return True


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until ready() is true; fail early, with the log's tail, if `proc` died."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{proc.args[:3]} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _stop_group(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class S3Server:
    """moto's S3 server in a subprocess on a free loopback port, with `bucket` created."""

    def __init__(self, bucket: str = "raylm"):
        self.bucket = bucket
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, str]:
        """Keyword arguments for pyarrow.fs.S3FileSystem (it ignores AWS_ENDPOINT_URL)."""
        return {"endpoint_override": f"127.0.0.1:{self.port}", "access_key": "testing",
                "secret_key": "testing", "region": "us-east-1", "scheme": "http"}

    @property
    def env(self) -> dict[str, str]:
        """The same settings as environment variables, for boto3-style clients on the nodes."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def filesystem(self):
        from pyarrow import fs

        return fs.S3FileSystem(**self.options, allow_bucket_creation=True)

    def __enter__(self) -> S3Server:
        handle, log = tempfile.mkstemp(prefix="moto-", suffix=".log")
        os.close(handle)
        self.log = Path(log)
        self.port = _free_port_block(1)  # not an ephemeral port: no outgoing connection takes it meanwhile
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: _answers(self.endpoint), self.proc, self.log, timeout=60)
            self.filesystem().create_dir(self.bucket)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        _stop_group(self.proc)
        self.log.unlink(missing_ok=True)


class TwoNodeCluster:
    """A head node and a worker node in its own mount namespace; see the module docstring.

    The nodes offer the custom resources {"node_a": 1} and {"node_b": 1} unless told otherwise,
    so that a task can be pinned to either."""

    # Loopback, one address per node. Not 127.0.0.1: Ray swaps that for the machine's outward address.
    HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
    # per cluster: base + 0..9 head, base + 10..19 worker, base + 100..249 and base + 250..399 their workers
    PORTS = 400

    def __init__(self, *, head_cpus: int = 1, worker_cpus: int = 1, head_resources: dict | None = None,
                 worker_resources: dict | None = None, private_dirs=(), bind_dirs=(), env: dict | None = None,
                 object_store_memory: int = 256 * 2**20, start_timeout: float = 120):
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.head_resources = {"node_a": 1} if head_resources is None else head_resources
        self.worker_resources = {"node_b": 1} if worker_resources is None else worker_resources
        self.private_dirs = [str(Path(d).resolve()) for d in private_dirs]
        self.bind_dirs = [str(Path(d).resolve()) for d in bind_dirs]
        assert len(self.bind_dirs) <= 7, "sh names file descriptors 3 to 9 only"
        self.extra_env = dict(env or {})
        self.object_store_memory = object_store_memory
        self.start_timeout = start_timeout
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_namespace = ""

    def __enter__(self) -> TwoNodeCluster:
        # short: Ray's unix sockets live under RAY_TMPDIR (a 107-byte path limit)
        self.root = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        self.token = secrets.token_hex(32)
        base = _free_port_block(self.PORTS)
        self.gcs_port, self.dashboard_port = base, base + 1
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        try:
            self._start_head(base, base + 100)
            self._worker_ports = (base + 10, base + 250)
            self._start_worker(*self._worker_ports)
            _wait(lambda: _answers(self.address + "/api/version"), self.head, Path(self.root, "head.log"),
                  self.start_timeout)
            self._wait_for_worker()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _node_env(self, tmpdir: str) -> dict[str, str]:
        # TMPDIR: Python's temp files (the dashboard's multiprocessing sockets) go where teardown cleans
        return {**self._common_env(), "RAY_TMPDIR": tmpdir, "TMPDIR": self.root, MARKER: self.root}

    def _ray_start(self, base: int, worker_ports: int, cpus: int, resources: dict, ip: str) -> list[str]:
        """`ray start --block` with every port a node opens set explicitly: base + 2 to base + 8, 150 worker ports."""
        return [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--node-ip-address={ip}",
                f"--num-cpus={cpus}", f"--resources={json.dumps(resources)}",
                f"--object-store-memory={self.object_store_memory}",
                f"--node-manager-port={base + 2}", f"--object-manager-port={base + 3}",
                f"--dashboard-agent-listen-port={base + 4}", f"--dashboard-agent-grpc-port={base + 5}",
                f"--runtime-env-agent-port={base + 6}", f"--metrics-export-port={base + 7}",
                f"--min-worker-port={worker_ports}", f"--max-worker-port={worker_ports + 149}"]

    def _start_head(self, base: int, worker_ports: int) -> None:
        command = self._ray_start(base, worker_ports, self.head_cpus, self.head_resources, self.HEAD_IP) + [
            "--head", f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={base + 8}"]
        with open(f"{self.root}/head.log", "w") as log:
            self.head = subprocess.Popen(command, env=self._node_env(f"{self.root}/h"), start_new_session=True,
                                         stdout=log, stderr=subprocess.STDOUT)
        # the worker can join as soon as the GCS listens; the dashboard comes up meanwhile
        _wait(lambda: _listens(self.gcs_port), self.head, Path(self.root, "head.log"), self.start_timeout)

    def _start_worker(self, base: int, worker_ports: int) -> None:
        # A worker node takes the head's temp dir path from the GCS whatever its RAY_TMPDIR says; on
        # the worker that path lies on its private /tmp, so it is a different folder all the same.
        tmpdir = f"{self.root}/h"
        steps = [f"exec {3 + i}<{shlex.quote(d)}" for i, d in enumerate(self.bind_dirs)]  # before they are hidden
        for folder in ["/tmp", "/dev/shm", *self.private_dirs]:
            os.makedirs(folder, exist_ok=True)  # on the host, so the mount point exists outside /tmp too
            steps.append(f"mkdir -p {shlex.quote(folder)} && mount -t tmpfs -o mode=1777 tmpfs {shlex.quote(folder)}")
        for i, folder in enumerate(self.bind_dirs):
            # --no-canonicalize: mount would resolve the fd link to its path name, which the tmpfs now hides
            steps.append(f"mkdir -p {shlex.quote(folder)} && mount --no-canonicalize --bind /proc/self/fd/{3 + i} "
                         f"{shlex.quote(folder)} && exec {3 + i}<&-")
        steps.append(f"mkdir -p {shlex.quote(tmpdir)}")
        command = self._ray_start(base, worker_ports, self.worker_cpus, self.worker_resources, self.WORKER_IP) + [
            f"--address={self.HEAD_IP}:{self.gcs_port}"]
        steps.append("exec " + shlex.join(command))
        # --propagation private: none of these mounts reaches the host's mount table
        command = ["unshare", "-m", "--propagation", "private", "sh", "-c", " && ".join(steps)]
        with open(f"{self.root}/worker.log", "w") as log:
            self.worker = subprocess.Popen(command, env=self._node_env(tmpdir), start_new_session=True,
                                           stdout=log, stderr=subprocess.STDOUT)

    def close(self, grace: float = 2) -> None:
        """SIGTERM both nodes, and after `grace` seconds SIGKILL every process of the cluster still there."""
        doomed = self.pids()  # first: once a raylet dies, its workers no longer descend from `ray start`
        for proc in (self.worker, self.head):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + grace
        while any(p is not None and p.poll() is None for p in (self.worker, self.head)) and time.time() < deadline:
            time.sleep(0.2)
        kill_until_gone(doomed, self.pids)
        for proc in (self.worker, self.head):
            if proc is not None:
                proc.wait(timeout=10)  # reap them
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait_for_worker(self, replaced: str | None = None) -> None:
        """Until a worker node other than `replaced` (a node id) is alive."""
        deadline = time.time() + self.start_timeout
        while not any(n["node_ip"] == self.WORKER_IP and n["node_id"] != replaced
                      for n in self.nodes(timeout=max(1.0, deadline - time.time()))):
            if self.worker.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"worker node did not join:\n{self.log('worker')[-3000:]}")
            time.sleep(1)
        self.worker_namespace = os.readlink(f"/proc/{self.worker.pid}/ns/mnt")
        assert self.worker_namespace != os.readlink("/proc/self/ns/mnt")

    def replace_worker(self) -> float:
        """SIGKILL the worker node (kill_worker) and start a fresh one, as Kubernetes replaces a pod that
        died; returns the seconds until the new node had joined."""
        old = next(n["node_id"] for n in self.nodes() if n["node_ip"] == self.WORKER_IP)
        self.kill_worker()
        started = time.time()
        self._start_worker(*self._worker_ports)
        self._wait_for_worker(replaced=old)
        return time.time() - started

    def kill_worker(self) -> None:
        """SIGKILL everything on the worker node (its mount namespace), as a crash would; the head
        marks the node dead once its health checks give up (about 15 s)."""
        deadline = time.time() + 15
        while (doomed := self.worker_pids()) and time.time() < deadline:
            for pid in doomed:
                _kill(pid)
            time.sleep(0.1)
        self.worker.wait(timeout=10)

    @property
    def env(self) -> dict[str, str]:
        """The environment a client needs: `env`, the auth token, this venv's bin on PATH, RAY_ADDRESS."""
        return {**self._common_env(), "RAY_ADDRESS": self.address}

    def _common_env(self) -> dict[str, str]:
        return common_env(self.token, self.extra_env)

    def log(self, node: str) -> str:
        """What `ray start` printed on `node` ("head" or "worker")."""
        return Path(self.root, f"{node}.log").read_text(errors="replace")

    def nodes(self, timeout: float = 60) -> list[dict]:
        """The alive nodes, from the state API on the dashboard (plain HTTP: no Ray client in this process)."""
        url = self.address + "/api/v0/nodes?filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return json.load(response)["data"]["result"]["result"]
            except (OSError, KeyError, ValueError):  # the state API answers a little after the dashboard
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def submit(self, entrypoint: list[str], working_dir, runtime_env: dict | None = None,
               timeout: float = 600) -> tuple[int, str]:
        """`ray job submit` (waits for the job); returns its exit code and its output with the job's logs."""
        command = [str(BIN / "ray"), "job", "submit", "--address", self.address, "--working-dir", str(working_dir)]
        if runtime_env:
            command += ["--runtime-env-json", json.dumps(runtime_env)]
        command += ["--", *entrypoint]
        deadline = time.time() + 120
        while True:  # the head's job agent comes up a few seconds after its HTTP server
            run = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
            logs = run.stdout + run.stderr
            if "No available agent" not in logs or time.time() > deadline:
                return run.returncode, logs
            time.sleep(2)

    def submit_nowait(self, entrypoint: list[str], working_dir, runtime_env: dict | None = None) -> str:
        """`ray job submit --no-wait`; returns the job's submission id."""
        command = [str(BIN / "ray"), "job", "submit", "--no-wait", "--address", self.address,
                   "--working-dir", str(working_dir)]
        if runtime_env:
            command += ["--runtime-env-json", json.dumps(runtime_env)]
        deadline = time.time() + 120
        while True:
            run = subprocess.run(command + ["--", *entrypoint], env=self.env, capture_output=True, text=True,
                                 timeout=300)
            logs = run.stdout + run.stderr
            if "No available agent" not in logs or time.time() > deadline:
                break
            time.sleep(2)
        assert run.returncode == 0, logs[-3000:]
        return logs.split("Job '", 1)[1].split("'", 1)[0]

    def job(self, job_id: str) -> tuple[str, str]:
        """(status, logs so far) of a job, from the Job Submission REST API."""
        headers = {"Authorization": f"Bearer {self.token}"}
        with urllib.request.urlopen(urllib.request.Request(f"{self.address}/api/jobs/{job_id}", headers=headers),
                                    timeout=30) as response:
            status = json.load(response)["status"]
        with urllib.request.urlopen(urllib.request.Request(f"{self.address}/api/jobs/{job_id}/logs",
                                                           headers=headers), timeout=30) as response:
            return status, json.load(response)["logs"]

    def pids(self) -> dict[int, str]:
        """Every live process of this cluster (pid: start time): the nodes' descendants, and any
        orphan with the cluster's marker in its environment (a job driver starts its own session)."""
        return cluster_pids({p.pid for p in (self.head, self.worker) if p is not None and p.poll() is None}, self.root)

    def worker_pids(self) -> dict[int, str]:
        """Every process in the worker node's mount namespace (pid: start time)."""
        found = {}
        for pid, (_, started) in _processes().items():
            try:
                if os.readlink(f"/proc/{pid}/ns/mnt") == self.worker_namespace:
                    found[pid] = started
            except OSError:
                pass
        return found


def _processes() -> dict[int, tuple[int, str]]:
    """pid: (parent pid, start time) of every running process on the machine (zombies are done)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                table[int(entry.name)] = (int(fields[1]), fields[19])  # stat's 4th and 22nd fields
    return table


def _alive(pids: dict[int, str]) -> dict[int, str]:
    """Those still running; the start time tells a reused pid apart."""
    table = _processes()
    return {pid: started for pid, started in pids.items() if pid in table and table[pid][1] == started}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def common_env(token: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a test cluster's processes and clients: this one without another Ray's address,
    `extra`, token auth with `token`, this venv's bin on PATH."""
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR", MARKER)}
    return {**base, **extra, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

def cluster_pids(roots: set[int], root: str) -> dict[int, str]:
    """Live processes (pid: start time) of the test cluster whose folder is `root`: `roots`, every
    process with MARKER=root in its environment or `root` on its command line (a session dir), and
    their descendants (Ray's setproctitle can clobber environ: parents are followed too)."""
    table = _processes()
    needle = f"{MARKER}={root}\0".encode()
    roots = set(roots)
    for pid in table:
        try:
            proc = Path(f"/proc/{pid}")
            if pid != os.getpid() and (needle in (proc / "environ").read_bytes()
                                       or root.encode() in (proc / "cmdline").read_bytes()):
                roots.add(pid)
        except OSError:  # gone meanwhile, or not ours to read
            pass
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][1]
            todo += children.get(pid, [])
    return found


def kill_until_gone(doomed: dict[int, str], find, timeout: float = 15) -> None:
    """SIGKILL `doomed` and whatever find() turns up, until none of them is alive."""
    deadline = time.time() + timeout
    while doomed := _alive({**doomed, **find()}):
        for pid in doomed:
            _kill(pid)
        if time.time() > deadline:
            raise RuntimeError(f"cluster processes survived SIGKILL: {sorted(doomed)}")
        time.sleep(0.2)


def record(path: Path, drill: str, measures: dict) -> None:
    """Append one run's measures to the drill's list in the JSON file at `path` (the last 10 runs are kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    runs = data.get(drill, [])[-9:]
    data[drill] = [*runs, {"at": time.strftime("%Y-%m-%d %H:%M:%S"), **measures}]
    path.write_text(json.dumps(data, indent=2) + "\n")
