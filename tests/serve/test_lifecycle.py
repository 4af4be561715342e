"""Nothing outlives `raylm serve`: stopped in every order, no vLLM engine and no HAProxy is left behind,
and the next `raylm serve` on the same port starts healthy.

Each server runs in a PID namespace of its own (`unshare --pid`, entered with `nsenter`), so that
`ray stop` stops only that server's Ray and not this test session's, and so that whatever a stop leaves
behind is reparented to the namespace's holder process, where it is found. The namespace shares the
network: ports are the machine's. Orders: SIGTERM and SIGINT to the server's process group, `ray stop`,
a SIGKILLed replica (Serve replaces it; the old engine must go) and then a SIGKILLed raylet; two
orders at a time, each server in its own namespace.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from raylm.ray_setup import free_ports
from raylm.serve.lifecycle import ENGINE_NAMES, named
from tests.serve.conftest import free_port

pytestmark = pytest.mark.slow
BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
LEFT_NAMES = (*ENGINE_NAMES, "haproxy")


class Namespace:
    """A PID namespace held open by `sleep`; commands run inside it with nsenter (whose child they are)."""

    def __init__(self):
        self.holder = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "infinity"],
                                       start_new_session=True)
        deadline = time.time() + 10
        while not (children := psutil.Process(self.holder.pid).children()) and time.time() < deadline:
            time.sleep(0.05)
        self.init = children[0].pid  # `sleep`, pid 1 inside: orphans of the namespace end up under it

    def popen(self, command: list[str], env: dict, log: Path) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", "-t", str(self.init), "-p", "-m", *command], env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        """Every live process in the namespace (its init, `sleep`, aside; it reaps nothing, so the dead that
        were reparented to it stay as zombies, which hold no memory, core or port and are left out)."""
        try:
            namespace = os.readlink(f"/proc/{self.init}/ns/pid")
        except FileNotFoundError:
            return []
        found = []
        for process in psutil.process_iter():
            try:
                if (process.pid != self.init and os.readlink(f"/proc/{process.pid}/ns/pid") == namespace
                        and process.status() != psutil.STATUS_ZOMBIE):
                    found.append(process)
            except (FileNotFoundError, PermissionError, psutil.NoSuchProcess):
                pass
        return found

    def left(self) -> dict[int, str]:
        """Engine and HAProxy processes alive in the namespace."""
        return {process.pid: process.name() for process in named(self.processes(), LEFT_NAMES)}

    def close(self) -> None:
        os.killpg(self.holder.pid, signal.SIGKILL)  # the namespace's init dies: the kernel kills the rest
        self.holder.wait()


@pytest.fixture(scope="module")
def namespace():
    space = Namespace()
    yield space
    space.close()


def start_server(space: Namespace, checkpoint: str, port: int, root: Path, tag: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYLM_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    command = [str(BIN / "raylm"), "serve", "--checkpoint", checkpoint, "--port", str(port),
               "-o", f"storage.uri={root}", "-o", "ray.num_cpus=2"]
    server = space.popen(command, env, root / f"{tag}.log")
    deadline = time.time() + 240
    while time.time() < deadline:
        assert server.poll() is None, (root / f"{tag}.log").read_text()[-3000:]
        if healthy(port):
            return server
        time.sleep(1)
    raise AssertionError(f"server {tag} not healthy in 240 s:\n" + (root / f"{tag}.log").read_text()[-3000:])


def server_socket() -> socket.socket:
    """A socket that binds as servers (HAProxy, uvicorn, raylm's own port check) do: with SO_REUSEADDR,
    so the closed connections a stop leaves in TIME_WAIT for a minute do not count, a listener does."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def wait_until(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def alive(pid: int) -> bool:
    """Running, not a zombie (a killed engine is reparented to the server, which reaps it when it exits)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(space: Namespace, server: subprocess.Popen, order: str, root: Path, port: int) -> None:
    if order in ("sigterm", "sigint"):
        os.killpg(server.pid, signal.SIGTERM if order == "sigterm" else signal.SIGINT)
    elif order == "ray-stop":
        space.popen([str(BIN / "ray"), "stop"], dict(os.environ), root / "ray-stop-command.log").wait(timeout=120)
    elif order == "replica-then-raylet-killed":
        [replica] = named(space.processes(), "ray::ServeRepli")
        engines = [p.pid for p in replica.children(recursive=True) if p.name().startswith(ENGINE_NAMES)]
        assert engines, "the replica's vLLM engine processes were not found"
        replica.kill()
        # the old engine goes with its replica (the reaper); Serve starts a new replica with a new engine
        assert wait_until(lambda: not any(alive(pid) for pid in engines), 15), engines
        assert wait_until(lambda: healthy(port), 180), "no new replica after the old one was killed"
        [raylet] = named(space.processes(), "raylet")
        raylet.kill()
        assert wait_until(lambda: not space.left(), 30), space.left()
        os.killpg(server.pid, signal.SIGTERM)
    # the driver (not nsenter, which a signal ends at once) has finished: a SIGTERM'd Serve shuts down for a while
    assert wait_until(lambda: not named(space.processes(), "raylm"), 120), "raylm serve did not exit"
    server.wait(timeout=10)


def serve_and_stop(checkpoint: str, root: Path, order: str, port: int) -> None:
    """A server in a namespace of its own, stopped in `order`: nothing may be left, and the port is free."""
    space = Namespace()
    try:
        server = start_server(space, checkpoint, port, root, order)
        assert any(name == "haproxy" for name in space.left().values())  # the ingress under test is up
        stop(space, server, order, root, port)
        assert wait_until(lambda: not space.left(), 20), f"left after {order}: {space.left()}"
        # the port is free again: the next test's server (same port) must start healthy
        with server_socket() as probe:
            probe.bind(("127.0.0.1", port))
    finally:
        space.close()


# Two servers at once, each in its own namespace and on its own port (the next pair reuses both ports): a
# start is mostly one core's Python imports, so two overlap (a pair took 110 s, one after the other 140-165 s).
@pytest.mark.parametrize("orders", [("sigterm", "sigint"), ("ray-stop", "replica-then-raylet-killed")], ids="+".join)
def test_nothing_outlives_the_server(scripted_checkpoint, tmp_path_factory, orders):
    checkpoint, _, _ = scripted_checkpoint
    with ThreadPoolExecutor(len(orders)) as pool:
        stops = [pool.submit(serve_and_stop, checkpoint.uri(), tmp_path_factory.mktemp(f"serve-{order}"), order, port)
                 for order, port in zip(orders, PORTS)]
        for done in stops:
            done.result()  # raises what failed in that server's thread


def test_a_taken_port_fails_the_start_at_once(namespace, scripted_checkpoint, tmp_path):
    checkpoint, _, _ = scripted_checkpoint
    with server_socket() as squatter:
        squatter.bind(("127.0.0.1", PORT))
        squatter.listen()
        start = time.perf_counter()
        result = subprocess.run([str(BIN / "raylm"), "serve", "--checkpoint", checkpoint.uri(), "--port", str(PORT),
                                 "-o", f"storage.uri={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and time.perf_counter() - start < 30
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and f"port {PORT} on 127.0.0.1 is taken by" in error[0] and f"pid {os.getpid()}" in error[0]


def test_leftover_engine_blocks_the_start(namespace, tmp_path, scripted_checkpoint):
    """An engine process of an earlier raylm server, orphaned, makes the next start refuse, naming it."""
    checkpoint, _, _ = scripted_checkpoint
    fake = ("import setproctitle, time; setproctitle.setproctitle('VLLM::EngineCore'); time.sleep(120)")
    env = dict(os.environ)
    # started through nsenter, which exits: the process is reparented to the namespace's init, an orphan
    namespace.popen(["sh", "-c", f"{BIN / 'python'} -c \"{fake}\" &"], env, tmp_path / "fake.log").wait()
    assert wait_until(lambda: named(namespace.processes(), "VLLM::EngineCor"), 10)
    [orphan] = named(namespace.processes(), "VLLM::EngineCor")
    try:
        result = subprocess.run([str(BIN / "raylm"), "serve", "--checkpoint", checkpoint.uri(), "--port",
                                 str(free_port()), "-o", f"storage.uri={tmp_path}"], capture_output=True, text=True,
                                timeout=60)  # refused before Ray starts, or it would be a server outside the namespace
        assert result.returncode == 2 and f"pids {orphan.pid}" in result.stderr, result.stderr[-2000:]
    finally:
        orphan.kill()


PORTS = free_ports(2)
PORT = PORTS[0]
