"""On CPU, run vLLM's engine-core process on the cores of its worker.

    from raylm.serve.placement import EngineCorePlacement
    placement = EngineCorePlacement()    # after the engine started, in the process that started it
    placement.update(ongoing_requests)   # on the worker's cores while requests are in flight, else anywhere

vLLM on CPU runs three processes: the frontend (here: the Serve replica), the
engine core (scheduler) and a worker (the model), whose threads vLLM binds to
some cores (`VLLM_CPU_OMP_THREADS_BIND=auto`) while the engine core may run
anywhere. On CPU the engine core and the worker take turns (vLLM turns async
scheduling off there): the core schedules a step, the worker runs it, the core
reads the result; each spins (yielding) while it waits for the other. Left to
the OS scheduler, the engine core shares the free cores with the HTTP frontend
and the clients, and every step waits for it to get a turn there. On the
worker's cores it runs exactly when the worker does not, and the other cores
are left to HTTP. On the 2-core VM that took vLLM's own server from ~12 to
~45 req/s at 8 clients. The replica moves the engine core while at least
`serve.colocate_from_requests` requests run (default 1: any) and lets it go when
the engine is idle. A threshold of 2 (the earlier default, for a ~20% quicker
hand-off with one request) left the core spinning beside HTTP whenever a burst
began from one request or none, and the first tokens of the burst waited for the
frontend's core: p99 time to first token at 32 clients 553 ms against 199 ms with
1, and 88 ms against 14 ms median at one client (benchmarks/RESULTS.md, "Time to
first token"); `serve.colocate_engine_core` turns moving off. Not on GPU: there the engine core
prepares the next step while the GPU runs the last one.
"""

from __future__ import annotations

import os

import psutil

from raylm.serve.lifecycle import ENGINE_NAMES, named

ENGINE_CORE, WORKER = ENGINE_NAMES  # process names (15 characters, as the kernel keeps them)


class EngineCorePlacement:
    """Moves vLLM's engine core(s) under `parent` (default: this process) onto its workers' CPUs while at
    least `busy` requests run, and back onto every CPU this process may use when fewer do.

    `enabled` is False when there is nothing to move: no engine core or worker found, or workers
    that may run on every CPU anyway.
    """

    def __init__(self, parent: int | None = None, busy: int = 1):
        root = psutil.Process(parent or os.getpid())
        family = root.children(recursive=True)
        self.cores, workers = named(family, ENGINE_CORE), named(family, WORKER)
        self.busy = busy
        self.all_cpus = sorted(root.cpu_affinity())
        self.worker_cpus = sorted(set().union(*(worker.cpu_affinity() for worker in workers))) if workers else []
        self.enabled = bool(self.cores and self.worker_cpus) and set(self.worker_cpus) < set(self.all_cpus)
        self.colocated = False

    def update(self, ongoing: int) -> None:
        if self.enabled and (ongoing >= self.busy) != self.colocated:
            self.colocate(not self.colocated)

    def colocate(self, on: bool = True) -> None:
        cpus = self.worker_cpus if on else self.all_cpus
        for core in self.cores:
            try:
                for thread in core.threads():  # affinity is per thread on Linux: the ZMQ and I/O threads too
                    os.sched_setaffinity(thread.id, cpus)
            except (psutil.NoSuchProcess, ProcessLookupError):  # the engine is shutting down
                pass
        self.colocated = on


def colocate_engine_core(parent: int | None = None) -> list[int] | None:
    """Pin the engine core(s) under `parent` to their workers' CPUs for good (benchmarks/serve.py does this to
    vLLM's own server); returns those CPUs, or None when there is nothing to move."""
    placement = EngineCorePlacement(parent)
    if not placement.enabled:
        return None
    placement.colocate()
    return placement.worker_cpus
