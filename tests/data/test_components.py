"""Connected components on Ray Data give scipy's answer: per node with an edge, the smallest id of its component.

scipy on one process (what dedup did before) is the reference. The star steps are
checked on many random graphs in one process (cheap), the Ray Data plumbing on
one graph holding every shape at once (each Ray Data job costs seconds here).
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_connected_components

from raylm.data.components import (ComponentsDidNotConverge, _both_directions, _labels, _large_star, _small_star,
                                   _star_partition, components_of_table, connected_components)


def scipy_components(edges: list[tuple[str, str]]) -> dict[str, str]:
    """The reference: all edges in one process, scipy's components, smallest id per component."""
    if not edges:
        return {}
    ids, index = np.unique(np.array(edges, dtype=str).T.ravel(), return_inverse=True)
    m = len(edges)
    graph = coo_matrix((np.ones(m, dtype=np.int8), (index[:m], index[m:])), shape=(len(ids), len(ids)))
    _, labels = scipy_connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # ids are sorted: the first member is the smallest
    return dict(zip(ids.tolist(), ids[first[labels]].tolist()))


def path(ids: list[str]) -> list[tuple[str, str]]:
    return list(zip(ids, ids[1:]))


def star(ids: list[str]) -> list[tuple[str, str]]:
    return [(ids[0], leaf) for leaf in ids[1:]]


def clique(ids: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]


def every_shape(rng: random.Random) -> list[tuple[str, str]]:
    """One graph with every shape as its own components; ids drawn so that no two shapes share one."""
    fresh = iter(rng.sample(range(10**6), 2000))

    def ids(n: int, prefix: str = "d") -> list[str]:
        return [f"{prefix}{next(fresh)}" for _ in range(n)]

    edges = path(ids(60))  # a long chain, ids in random order along it
    edges += path(sorted(ids(80)))  # a chain in id order: the most rounds
    edges += path(sorted(ids(50), reverse=True))
    edges += star(sorted(ids(30), reverse=True))  # centred on its largest id
    edges += clique(ids(12))
    edges += path([str(i) for i in range(1, 25)])  # "1" < "10" < "2": string order, not numeric
    for _ in range(40):  # many small components
        edges += rng.choice([path, star, clique])(ids(rng.randint(2, 4)))
    sparse = ids(60)  # a random sparse graph: trees, cycles, isolated pairs
    edges += [(rng.choice(sparse), rng.choice(sparse)) for _ in range(50)]
    edges += [(b, a) for a, b in edges[:20]] + edges[20:30]  # both directions and repeats
    edges += [("loop", "loop")]  # a node whose only edge is a self-loop is its own cluster
    rng.shuffle(edges)
    return edges


def in_one_partition(edges: list[tuple[str, str]]) -> tuple[dict[str, str], int]:
    """The star steps and labels on a single partition, as the driver loop runs them: (labels, rounds)."""
    links = _both_directions(pa.table({"src": [a for a, _ in edges], "dst": [b for _, b in edges]}))
    for rounds in range(1, 64):
        large = _star_partition(links, _large_star)
        small = _star_partition(large, _small_star)
        assert large.num_rows <= links.num_rows and small.num_rows <= large.num_rows  # edges never multiply
        links = small
        if not (pc.any(large["changed"]).as_py() or pc.any(small["changed"]).as_py()):
            labels = _labels(links)
            return dict(zip(labels["id"].to_pylist(), labels["cluster_id"].to_pylist())), rounds
    raise AssertionError("no convergence")


def test_reference_keeps_smallest_id_per_cluster():
    assert scipy_components([("b", "c"), ("d", "b"), ("x", "y")]) == {"b": "b", "c": "b", "d": "b", "x": "x", "y": "x"}


@pytest.mark.parametrize("seed", range(20))
def test_star_steps_match_scipy_on_random_graphs(seed):
    rng = random.Random(seed)
    edges = every_shape(rng)
    labels, rounds = in_one_partition(edges)
    assert labels == scipy_components(edges)
    assert rounds <= 10
    local = components_of_table(pa.table({"src": [a for a, _ in edges], "dst": [b for _, b in edges]}))
    assert dict(zip(local["id"].to_pylist(), local["cluster_id"].to_pylist())) == labels  # MinHash's local path


def test_connected_components_on_ray_data_match_scipy(ray_session):
    import ray.data

    edges = every_shape(random.Random(0))
    ds = ray.data.from_items([{"src": a, "dst": b} for a, b in edges], override_num_blocks=3)
    table = connected_components(ds, num_partitions=4).to_pandas()
    assert len(table) == table["id"].nunique()  # one row per node
    assert dict(zip(table["id"], table["cluster_id"])) == scipy_components(edges)


def test_empty_edge_set_and_round_bound(ray_session):
    import ray.data

    empty = ray.data.from_arrow(pa.table({"src": pa.array([], pa.string()), "dst": pa.array([], pa.string())}))
    clusters = connected_components(empty, num_partitions=2)
    assert clusters.count() == 0 and clusters.schema().names == ["id", "cluster_id"]
    chain = ray.data.from_items([{"src": a, "dst": b} for a, b in path([f"n{i:02d}" for i in range(40)])])
    with pytest.raises(ComponentsDidNotConverge, match="after 1 rounds"):
        connected_components(chain, num_partitions=2, max_rounds=1)
