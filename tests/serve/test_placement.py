"""Engine-core placement on real processes named as vLLM names them: a frontend, its engine core, and the
engine core's worker bound to CPU 0. (Placement is always asked about a given parent: the test session's own
children include the Serve replica's real vLLM engine.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from raylm.serve.placement import EngineCorePlacement, colocate_engine_core

# An "engine core" that starts a "worker" bound to CPU 0, as vLLM-CPU binds its worker, then both sleep.
FAMILY = """
import os, subprocess, sys, time
open("/proc/self/comm", "w").write("VLLM::EngineCore")
worker = "open('/proc/self/comm', 'w').write('VLLM::Worker'); import os, time; os.sched_setaffinity(0, {0}); time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", worker])
time.sleep(60)
"""


@pytest.fixture
def engine_family():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("placement needs at least 2 CPUs to move anything")
    frontend = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, "
                                 f"'-c', {FAMILY!r}])"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the worker exists and is pinned
            family = psutil.Process(frontend.pid).children(recursive=True)
            named = {p.name(): p for p in family}
            if "VLLM::Worker" in named and named["VLLM::Worker"].cpu_affinity() == [0]:
                break
            time.sleep(0.1)
        yield frontend.pid, named["VLLM::EngineCor"]
    finally:
        for child in psutil.Process(frontend.pid).children(recursive=True):
            child.kill()
        frontend.kill()
        frontend.wait()


def thread_cpus(process: psutil.Process) -> set[tuple[int, ...]]:
    return {tuple(sorted(os.sched_getaffinity(t.id))) for t in process.threads()}


def test_engine_core_joins_the_worker_only_under_load(engine_family):
    frontend, engine_core = engine_family
    every = tuple(sorted(os.sched_getaffinity(0)))
    placement = EngineCorePlacement(frontend, busy=2)
    assert placement.enabled and placement.worker_cpus == [0]
    placement.update(1)
    assert thread_cpus(engine_core) == {every}  # one request: left anywhere
    placement.update(2)
    assert thread_cpus(engine_core) == {(0,)}   # a batch: on the worker's CPU, every thread
    placement.update(5)
    assert thread_cpus(engine_core) == {(0,)}
    placement.update(0)
    assert thread_cpus(engine_core) == {every}


def test_nothing_to_move_without_an_engine():
    lone = subprocess.Popen(["sleep", "30"])
    try:
        assert not EngineCorePlacement(lone.pid).enabled
        assert colocate_engine_core(lone.pid) is None
    finally:
        lone.kill()
        lone.wait()


def test_colocate_for_good(engine_family):
    frontend, engine_core = engine_family
    assert colocate_engine_core(frontend) == [0]
    assert thread_cpus(engine_core) == {(0,)}
