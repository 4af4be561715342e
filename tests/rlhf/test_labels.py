"""The label database (raylm/rlhf/labels.py) on real SQLite files: pairs, leases, overlap, verdicts, export.

    python -m pytest tests/rlhf/test_labels.py -q      # no Ray, about a second
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from raylm.cli import main
from raylm.config import RunConfig, StorageConfig
from raylm.errors import InputError
from raylm.rlhf.labels import LabelStore, NewItem, default_url, label_database_url

PROMPT = [{"role": "system", "content": "You write short poems."}, {"role": "user", "content": "A poem about a river"}]


def new_items(n: int, k: int = 4, model: str = "ckpt-a") -> list[NewItem]:
    return [NewItem([*PROMPT[:1], {"role": "user", "content": f"poem {i}"}], [f"answer {i}.{j}" for j in range(k)],
                    model, {"family": "poem", "subject": f"s{i}", "split": "train"}) for i in range(n)]


@pytest.fixture
def store(tmp_path) -> LabelStore:
    return LabelStore(default_url(tmp_path / "db" / "labels.db"))


def test_a_ranking_of_four_stores_exactly_its_six_pairs(store):
    first, second = store.add_items(new_items(2))
    assert [i.id for i in store.items()] == [first, second] and store.items(model="other") == []
    item = store.next_item("alice")
    assert item.id == first and item.answers == ["answer 0.0", "answer 0.1", "answer 0.2", "answer 0.3"]
    assert item.messages[1]["content"] == "poem 0" and item.meta["subject"] == "s0"
    assert store.submit_ranking(item.id, "alice", [2, 0, 3, 1]) == 6
    assert {(p.chosen, p.rejected) for p in store.pairs()} == {(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)}
    assert len(store.pairs()) == 6 and {(p.item_id, p.labeler) for p in store.pairs()} == {(first, "alice")}
    [ranking] = store.rankings()
    assert (ranking.item.id, ranking.labeler, ranking.labeler_kind, ranking.order) == (first, "alice", "human",
                                                                                       [2, 0, 3, 1])
    assert ranking.item.model == "ckpt-a" and ranking.created_at.tzinfo is not None
    assert store.rankings(model="other") == [] and store.rankings(kind="synthetic") == []
    assert store.stats() == {"items": 2, "ranked": 1, "rankings": 1, "skipped": 0, "flagged": 0,
                             "labelers": {"human": 1}, "pairs": 6}
    assert store.count_open(overlap=1) == 1 and store.count_open(overlap=2) == 2 and store.ranked_by("alice") == 1


def test_bad_orders_unknown_items_and_second_rankings_are_refused(store):
    [item_id] = store.add_items(new_items(1))
    for order in ([0, 1, 2], [0, 0, 1, 2], [0, 1, 2, 4], [0, 1, 2, 3, 4], "0123", [True, 0, 2, 3], [0.0, 1, 2, 3]):
        with pytest.raises(ValueError, match="each answer index 0..3 once"):
            store.submit_ranking(item_id, "alice", order)
    with pytest.raises(ValueError, match="no item 99"):
        store.submit_ranking(99, "alice", [0, 1, 2, 3])
    with pytest.raises(ValueError, match="labeler name"):
        store.submit_ranking(item_id, " ", [0, 1, 2, 3])
    assert store.pairs() == [] and store.rankings() == []        # nothing half-written by a refusal
    store.submit_ranking(item_id, "alice", [3, 2, 1, 0])
    with pytest.raises(ValueError, match="alice has already ranked item"):
        store.submit_ranking(item_id, "alice", [0, 1, 2, 3])
    with pytest.raises(ValueError, match="answers must be a list of two or more"):
        store.add_items([NewItem(PROMPT, ["only one"], "m", {})])


def test_overlap_one_hands_out_different_items_overlap_two_the_same_and_measures_agreement(tmp_path):
    one = LabelStore(default_url(tmp_path / "one.db"))
    a, b = one.add_items(new_items(2))
    assert one.next_item("alice").id == a and one.next_item("bob").id == b and one.next_item("carol") is None

    two = LabelStore(default_url(tmp_path / "two.db"))
    first, second = two.add_items(new_items(2, k=3))
    assert two.next_item("alice", overlap=2).id == first and two.next_item("bob", overlap=2).id == first
    assert two.next_item("carol", overlap=2).id == second   # two live leases on the first: it is full
    assert two.agreement() == {"items": 0, "pairs": 0, "agreement": None}
    two.submit_ranking(first, "alice", [0, 1, 2])
    two.submit_ranking(first, "bob", [0, 2, 1])              # agrees on (0,1), (0,2), not on (1,2)
    assert two.agreement() == {"items": 1, "pairs": 3, "agreement": pytest.approx(2 / 3)}
    assert two.next_item("dave", overlap=2).id == second     # ranked twice: no third ranking of the first


def test_a_lease_resumes_for_its_labeler_and_lapses_after_lease_s(store):
    a, b = store.add_items(new_items(2))
    assert store.next_item("alice", lease_s=60).id == a
    assert store.next_item("alice", lease_s=60).id == a      # a reload resumes the same item
    assert store.next_item("bob", lease_s=0.2).id == b
    assert store.next_item("carol") is None                  # both leased
    time.sleep(0.3)                                          # bob's lease lapsed: his item is free again
    assert store.next_item("carol").id == b
    assert store.next_item("bob") is None                    # and bob's is now carol's


def test_skip_is_per_labeler_flag_is_for_everyone(store):
    a, b, c = store.add_items(new_items(3))
    assert store.next_item("alice").id == a
    store.skip(a, "alice")
    store.skip(a, "alice")                                   # idempotent
    assert store.next_item("alice").id == b                  # alice never sees a again ...
    assert store.next_item("bob").id == a                    # ... bob does
    store.submit_ranking(a, "bob", [0, 1, 2, 3])
    store.flag(b, "alice", note="the prompt is garbled")
    assert store.next_item("carol").id == c and store.next_item("dave") is None  # b: nobody, ever
    store.submit_ranking(c, "carol", [1, 0, 2, 3])
    store.flag(a, "carol")                                    # flagged after bob ranked it
    assert store.stats() | {"labelers": None} == {"items": 3, "ranked": 2, "rankings": 2, "skipped": 1,
                                                  "flagged": 2, "labelers": None, "pairs": 12}
    assert store.count_open() == 0
    with pytest.raises(ValueError, match="no item 42"):
        store.skip(42, "alice")


def test_concurrent_labelers_never_share_an_item(tmp_path):
    url = default_url(tmp_path / "labels.db")
    LabelStore(url).add_items(new_items(6))
    stores = [LabelStore(url) for _ in range(8)]             # one engine each, as separate processes have
    gate, got = threading.Barrier(8), {}

    def ask(i: int) -> None:
        gate.wait()
        got[i] = stores[i].next_item(f"labeler-{i}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    leased = [item.id for item in got.values() if item is not None]
    assert sorted(leased) == sorted(set(leased)) and len(leased) == 6 and len(got) == 8


def test_kinds_are_kept_and_a_name_is_never_reused_for_another_kind(store):
    a, b = store.add_items(new_items(2, k=2))
    item = store.next_item("synthetic-rater", kind="synthetic")
    store.submit_ranking(item.id, "synthetic-rater", [1, 0], kind="synthetic")
    store.submit_ranking(b, "alice", [0, 1])
    assert [r.labeler for r in store.rankings(kind="synthetic")] == ["synthetic-rater"]
    assert [r.labeler for r in store.rankings(kind="human")] == ["alice"]
    assert store.stats()["labelers"] == {"human": 1, "synthetic": 1}
    with pytest.raises(ValueError, match="belongs to a synthetic labeler"):
        store.next_item("synthetic-rater")                   # a person typing the rater's name on the page


def test_export_trl_and_import_pairs_round_trip(tmp_path, store):
    [item_id] = store.add_items(new_items(1, k=3))
    store.submit_ranking(item_id, "alice", [1, 2, 0])
    out = tmp_path / "prefs.jsonl"
    assert store.export_trl(out) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"prompt": [PROMPT[0], {"role": "user", "content": "poem 0"}],
                        "chosen": [{"role": "assistant", "content": "answer 0.1"}],
                        "rejected": [{"role": "assistant", "content": "answer 0.2"}]}
    assert [(x["chosen"][0]["content"][-1], x["rejected"][0]["content"][-1]) for x in lines] == [
        ("1", "2"), ("1", "0"), ("2", "0")]

    other = LabelStore(default_url(tmp_path / "other.db"))
    assert other.import_pairs(out, labeler="hh-rlhf", model="imported") == 3
    assert [(r.labeler, r.labeler_kind, r.order, r.item.model, len(r.item.answers)) for r in other.rankings()] == [
        ("hh-rlhf", "import", [0, 1], "imported", 2)] * 3
    again = tmp_path / "again.jsonl"
    assert other.export_trl(again) == 3 and again.read_text() == out.read_text()

    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}\n\n')
    assert other.import_pairs(plain) == 1
    assert other.rankings()[-1].item.messages == [{"role": "user", "content": "Say hi"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(ValueError, match=f"{bad}:2: not a preference pair"):
        other.import_pairs(bad)
    assert other.count_items() == 4                          # the good first line was not written either


def test_the_run_database_is_sqlite_in_the_run_folder_unless_configured(tmp_path):
    cfg = RunConfig(name="t", storage=StorageConfig(uri=str(tmp_path / "runs")))
    assert label_database_url(cfg) == f"sqlite:///{tmp_path}/runs/t/labels/labels.db"
    assert (tmp_path / "runs" / "t" / "labels").is_dir()
    cfg.preferences.database_url = "postgresql://labeler@db/labels"
    assert label_database_url(cfg) == "postgresql://labeler@db/labels"
    cfg = RunConfig(storage=StorageConfig(uri="s3://bucket/runs", endpoint_override="127.0.0.1:1", scheme="http"))
    with pytest.raises(InputError, match="set preferences.database_url"):
        label_database_url(cfg)


def test_raylm_label_exports_imports_and_refuses_an_empty_database(tmp_path, capsys):
    run = ["-o", f"storage.uri={tmp_path}", "--name", "t"]
    assert main(["label", *run]) == 1
    assert "run `raylm preferences` first" in capsys.readouterr().err
    pairs = tmp_path / "in.jsonl"
    pairs.write_text('{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}\n')
    assert main(["label", "--import", str(pairs), *run]) == 0
    assert main(["label", "--export", str(tmp_path / "out.jsonl"), *run]) == 0
    assert json.loads((tmp_path / "out.jsonl").read_text())["chosen"] == [{"role": "assistant", "content": "Hi!"}]
    pairs.write_text("not json\n")
    assert main(["label", "--import", str(pairs), *run]) == 2
    assert f"{pairs}:1: not a preference pair" in capsys.readouterr().err


def test_a_sealed_database_is_one_file_that_copies_whole(tmp_path):
    """The preferences step's snapshot on bucket storage: only labels.db travels, so nothing may stay in the WAL."""
    import shutil

    store = LabelStore(default_url(tmp_path / "a" / "labels.db"))
    [item] = store.add_items([NewItem([{"role": "user", "content": "Rank these."}], ["x", "y", "z"], "m", {})])
    store.submit_ranking(item, "rater", [2, 0, 1], kind="synthetic")
    store.seal()
    assert not (tmp_path / "a" / "labels.db-wal").exists()
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "labels.db", tmp_path / "b" / "labels.db")
    copy = LabelStore(default_url(tmp_path / "b" / "labels.db"))
    assert [(r.labeler, r.order) for r in copy.rankings()] == [("rater", [2, 0, 1])] and len(copy.pairs()) == 3
