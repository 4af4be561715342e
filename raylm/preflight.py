"""Checks that a cluster can run a raylm step, before any work starts.

    check_storage(Storage(cfg.storage), "tiny")    # raises InputError naming the first node that cannot

Every node must see the run's storage: a folder that is local to the driver's node
(a laptop path, a pod's own disk) looks fine to the driver and then loses every
artifact written elsewhere. So the driver writes a file, a zero-CPU task pinned to
each alive node reads it and writes one of its own, and the driver reads those
back: a node that cannot read the driver's file, or whose file the driver cannot
read, is named in a one-line error.
"""

from __future__ import annotations

import secrets

from raylm.errors import InputError
from raylm.storage import Storage

TIMEOUT_S = 120


def _probe(storage: Storage, folder: str, node_id: str) -> str | None:
    """On one node: read the driver's file, write this node's; returns a problem or None."""
    try:
        if storage.read_text(f"{folder}/driver") != "driver":
            return "read a different file than the driver wrote"
        storage.write_text(f"{folder}/{node_id}", node_id)
    except OSError as err:
        return f"{type(err).__name__}: {err}".splitlines()[0][:160]
    return None


def check_storage(storage: Storage, rel: str) -> int:
    """Round trip through `rel` in storage from every alive node; returns how many nodes passed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = f"{rel}/.preflight-{secrets.token_hex(4)}"
    storage.write_text(f"{folder}/driver", "driver")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(storage, folder, n["NodeID"]) for n in nodes}
    try:
        for node in nodes:
            node_id, where = node["NodeID"], f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"
            try:
                problem = ray.get(refs[node_id], timeout=TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                problem = f"did not answer within {TIMEOUT_S} s"
            if problem is None and not storage.is_file(f"{folder}/{node_id}"):
                problem = "wrote a file the driver cannot see"
            if problem:
                raise InputError(f"storage {storage.uri()} is not shared with {where}: {problem}; use a folder "
                                 f"mounted on every node or object storage (storage.uri=s3://...)")
    finally:
        storage.delete(folder)
    return len(nodes)
