"""Checks that a cluster can run a raylm step, before any work starts.

    check_storage(Storage(cfg.storage), "tiny")    # raises InputError naming the first node that cannot
    problems = check_cluster(cfg)                  # `raylm cluster check`: every problem, one line each

Every node must see the run's storage: a folder that is local to the driver's node
(a laptop path, a pod's own disk) looks fine to the driver and then loses every
artifact written elsewhere. So the driver writes a file, a zero-CPU task pinned to
each alive node reads it and writes one of its own, and the driver reads those
back: a node that cannot read the driver's file, or whose file the driver cannot
read, is named in a one-line error.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import time
from pathlib import Path

from raylm.config import RunConfig
from raylm.errors import InputError
from raylm.storage import Storage

TIMEOUT_S = 120
# A node that was just replaced stays listed alive until the head's health checks give up on it (Ray's defaults:
# up to about a minute); its probe fails at once, as a task pinned to a node that is gone. Such a node is given
# this long to be declared dead before its failure counts.
NODE_GONE_S = 90


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:160]


def _where(node: dict) -> str:
    return f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"


def _probe(storage: Storage, folder: str, node_id: str) -> str | None:
    """On one node: read the driver's file, write this node's; returns a problem or None."""
    try:
        if storage.read_text(f"{folder}/driver") != "driver":
            return "read a different file than the driver wrote"
        storage.write_text(f"{folder}/{node_id}", node_id)
    except OSError as err:
        return _one_line(err)
    return None


def check_storage(storage: Storage, rel: str) -> int:
    """Round trip through `rel` in storage from every alive node; returns how many nodes passed."""
    import ray

    folder = f"{rel}/.preflight-{secrets.token_hex(4)}"
    storage.write_text(f"{folder}/driver", "driver")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    try:
        answers = _on_each_node(_probe, nodes, storage, folder)
        for node in (n for n in nodes if n["NodeID"] in answers):
            node_id = node["NodeID"]
            problem = answers[node_id]
            if isinstance(problem, Exception):
                problem = f"did not answer ({type(problem).__name__})"
            elif problem is None and not storage.is_file(f"{folder}/{node_id}"):
                problem = "wrote a file the driver cannot see"
            if problem:
                raise InputError(f"storage {storage.uri()} is not shared with {_where(node)}: {problem}; use a folder "
                                 f"mounted on every node or object storage (storage.uri=s3://...)")
    finally:
        _on_each_node(_forget, nodes, storage, folder)
        storage.delete(folder)
    return len(answers)


def node_facts() -> dict:
    """What must agree across nodes: versions (raylm's code by content, not by its version string),
    and whether token auth is on."""
    import ray

    import raylm

    code = hashlib.sha256()
    for path in sorted(Path(raylm.__file__).parent.rglob("*.py")):
        code.update(path.read_bytes())
    return {"ray": ray.__version__, "python": platform.python_version(), "raylm": code.hexdigest()[:12],
            "auth": os.environ.get("RAY_AUTH_MODE", "disabled")}


def _round_trip(storage: Storage, folder: str, written: list[str], node_id: str) -> list[str]:
    """On one node: read every other node's file (written in the first round); returns problems."""
    problems = []
    for other in (n for n in written if n != node_id):
        try:
            if storage.read_text(f"{folder}/{other}") != other:
                problems.append(f"read a different file than node {other[:12]} wrote")
        except OSError:
            problems.append(f"cannot read what node {other[:12]} wrote")
    return problems


def _forget(storage: Storage, folder: str, node_id: str) -> None:
    """Remove the probe files as this node sees them (a node-local folder has its own copy to remove)."""
    storage.delete(folder)


def _on_each_node(fn, nodes: list[dict], *args) -> dict[str, object]:
    """fn(*args, node_id) as a zero-CPU task pinned to every node; results keyed by node id.

    A node that fails its task and is dead within NODE_GONE_S is left out: it left the cluster (a pod that
    crashed, or was replaced, is listed alive until the head's health checks give up on it) and will run
    no work."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(*args, n["NodeID"]) for n in nodes}
    results = {}
    for node_id, ref in refs.items():
        try:
            results[node_id] = ray.get(ref, timeout=TIMEOUT_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as err:
            results[node_id] = err
    failed = {n for n, r in results.items() if isinstance(r, Exception)}
    deadline = time.time() + NODE_GONE_S
    while failed:
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for node_id in failed - alive:
            print(f"[preflight] node {node_id[:12]} left the cluster during the check; skipped", flush=True)
            del results[node_id]
        failed &= alive
        if not failed or time.time() > deadline:
            break
        time.sleep(2)
    return results


def _facts_and_write(storage: Storage, folder: str, node_id: str) -> dict:
    facts = node_facts()
    try:
        storage.write_text(f"{folder}/{node_id}", node_id)
    except OSError as err:
        facts["write"] = _one_line(err)
    return facts


def gpus_wanted(cfg: RunConfig) -> dict[str, float]:
    """GPUs each step of the preset asks for, per Ray actor or worker."""
    wanted = {"pretrain": float(cfg.pretrain.use_gpu), "sft": float(cfg.sft.use_gpu),
              "rl rollouts": cfg.rl.rollout_gpus, "rl learner": cfg.rl.learner_gpus, "serve": cfg.serve.replica_gpus}
    return {step: n for step, n in wanted.items() if n > 0}


def check_cluster(cfg: RunConfig) -> list[str]:
    """Every problem that would stop raylm on this cluster, one line each; empty when it is fit.

    Per node: Ray, Python and raylm (code digest) equal the driver's; token auth on; a file written by
    each node is read by every other (and by the driver); GPUs somewhere (a node has them, or a node
    group the autoscaler can start) when the preset asks for them.
    """
    import ray
    from ray._private.state import state

    storage, mine = Storage(cfg.storage), node_facts()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    name = {n["NodeID"]: _where(n) for n in nodes}
    folder = f"{cfg.name}/.preflight-{secrets.token_hex(4)}"
    problems = []
    try:
        facts = _on_each_node(_facts_and_write, nodes, storage, folder)
        for node_id, fact in facts.items():
            if isinstance(fact, Exception):
                problems.append(f"{name[node_id]}: did not answer ({type(fact).__name__})")
                continue
            for key in ("ray", "python", "raylm"):
                if fact[key] != mine[key]:
                    problems.append(f"{name[node_id]}: {key} {fact[key]} differs from the driver's {mine[key]}")
            if fact["auth"] != "token":
                problems.append(f"{name[node_id]}: Ray token auth is off (RAY_AUTH_MODE={fact['auth']})")
            if "write" in fact:
                problems.append(f"{name[node_id]}: cannot write to storage {storage.uri()}: {fact['write']}")
        written = [n for n, f in facts.items() if isinstance(f, dict) and "write" not in f]
        for node_id, found in _on_each_node(_round_trip, nodes, storage, folder, written).items():
            found = [f"did not answer ({type(found).__name__})"] if isinstance(found, Exception) else found
            problems += [f"{name[node_id]}: storage {storage.uri()} is not shared: {p}" for p in found]
        unseen = [n for n in written if not storage.is_file(f"{folder}/{n}")]
        problems += [f"{name[n]}: storage {storage.uri()} is not shared: the driver cannot see its file"
                     for n in unseen]
    finally:
        _on_each_node(_forget, nodes, storage, folder)
        storage.delete(folder)
    wanted = gpus_wanted(cfg)
    if wanted:
        alive = sum(n["Resources"].get("GPU", 0) for n in nodes)
        possible = (state.get_max_resources_from_cluster_config() or {}).get("GPU", 0)
        if max(alive, possible) < max(wanted.values()):
            problems.append(f"cluster: no node has a GPU, nor can the autoscaler start one; the preset asks for "
                            f"GPUs in {', '.join(f'{s} ({n:g})' for s, n in wanted.items())}")
    return problems
