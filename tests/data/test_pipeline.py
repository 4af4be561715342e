"""The data step end to end on Ray Data, through the CLI: outputs, bad inputs, resume."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow.dataset as pads
import pytest

from raylm.cli import main
from raylm.data.report import FUNNEL_STEPS

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def table(folder):
    return pads.dataset(str(folder), format="parquet").to_table()


@pytest.fixture(scope="module")
def cleaned(ray_session, sample_files, tmp_path_factory):
    """`raylm data` over three sample files plus a truncated copy of the fourth."""
    inputs = tmp_path_factory.mktemp("inputs")
    for src in sample_files[1:]:
        (inputs / src.name).symlink_to(src)
    data = sample_files[0].read_bytes()
    (inputs / "broken-download.warc.gz").write_bytes(data[: len(data) // 2])
    out = tmp_path_factory.mktemp("run") / "clean"
    assert main(["data", "--input", str(inputs), "--output", str(out)]) == 0
    return out


def test_outputs_and_removal_log(cleaned):
    stats = json.loads((cleaned / "stats.json").read_text())
    kept, removed = table(cleaned / "kept"), table(cleaned / "removed")
    assert kept.column_names == ["id", "url", "text", "language_score", "cluster_id"]
    assert {"id", "url", "step", "reason"} <= set(removed.column_names)
    assert len(kept) == stats["kept_documents"] > 30
    assert len(kept) + len(removed) == stats["input_records"]
    assert len(set(kept.column("id").to_pylist()) | set(removed.column("id").to_pylist())) == stats["input_records"]

    reasons = removed.column("reason").to_pylist()
    assert all(re.fullmatch(r"[a-z0-9_]+", r) for r in reasons)  # every drop has a snake_case reason
    assert set(removed.column("step").to_pylist()) <= set(FUNNEL_STEPS)
    assert stats["skipped_records"]["truncated_archive"] == 1
    assert stats["skipped_records"]["non_html"] >= 2 and stats["skipped_records"]["http_404"] >= 2
    for step in ["url_filter", "language", "gopher_repetition", "gopher_quality", "exact_dedup", "minhash_dedup"]:
        assert stats["removed_by_step"].get(step, 0) > 0, step

    docs = kept.to_pylist()
    assert all(d["language_score"] >= 0.65 for d in docs)
    assert not any("0-porno.com" in d["url"] or "casino" in d["url"] for d in docs)
    assert not any(EMAIL.search(d["text"]) and "example." not in d["text"] for d in docs)
    assert len({d["text"] for d in docs}) == len(docs)  # no exact duplicates survive
    funnel = [row["documents"] for row in stats["funnel"]]
    assert funnel == sorted(funnel, reverse=True) and funnel[-1] == len(kept)
    assert (cleaned / "funnel.png").stat().st_size > 10_000
    assert json.loads((cleaned / "manifest.json").read_text())["metrics"]["kept_documents"] == len(kept)


def test_id_filters_match_the_joins(ray_session, monkeypatch):
    """A few ids travel inside the query (a filter, a dict); past LOCAL_IDS joins give the same rows."""
    import ray.data

    from raylm.data import pipeline

    docs = ray.data.from_items([{"id": f"d{i:03d}", "text": str(i)} for i in range(120)], override_num_blocks=3)
    drop = ray.data.from_items([{"id": f"d{i:03d}"} for i in range(0, 120, 7)]).materialize()
    clusters = ray.data.from_items([{"id": f"d{i:03d}", "cluster_id": f"d{i - i % 3:03d}"} for i in range(30, 60)])

    def outcome():
        dropped, rest = pipeline.split_by_ids(docs, drop, 2)
        return (sorted(r["id"] for r in rest.take_all()), sorted(r["id"] for r in dropped.take_all()),
                sorted((r["id"], r["cluster_id"]) for r in pipeline.with_cluster_ids(docs, clusters.materialize(), 2)
                       .take_all()))

    local = outcome()
    assert len(local[0]) == 120 - 18 and len(local[1]) == 18 and not set(local[0]) & set(local[1])
    assert ("d031", "d030") in local[2] and ("d030", "d030") in local[2] and ("d100", "d100") in local[2]
    none = drop.limit(0).materialize()
    assert [len(part.take_all()) for part in pipeline.split_by_ids(docs, none, 2)] == [0, 120]
    monkeypatch.setattr(pipeline, "LOCAL_IDS", 0)
    assert outcome() == local


# every step, each kept short: the whole pipeline end to end (the tiny preset's lengths run in `make run`)
SHORT = ["pretrain.steps=20", "pretrain.eval_every=20", "pretrain.checkpoint_every=20", "sft.steps=10",
         "sft.eval_every=10", "sft.checkpoint_every=10", "sft.mix={identity: 40, compare: 40}", "rl.engine=torch",
         "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=16", "rl.eval_per_family=4",
         "eval.num_per_family=3", "eval.max_new_tokens=16", "preferences.items=20", "preferences.max_new_tokens=16",
         "reward.num_workers=1", "reward.steps=2", "reward.eval_every=2", "reward.checkpoint_every=2",
         "reward.batch_size=2", "rlhf.engine=torch", "rlhf.steps=2", "rlhf.prompts_per_step=2", "rlhf.group_size=2",
         "rlhf.max_new_tokens=16", "rlhf.validation_prompts=2", "rlhf.final_prompts=4", "rlhf.eval_every=1"]


def test_run_resumes_and_redoes_what_a_change_upstream_touches(ray_session, sample_files, tmp_path, capsys):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    shutil.copy(sample_files[3], crawl)
    args = ["run", "--no-serve", "--name", "resume", "-o", f"storage.uri={tmp_path}", "-o", f"data.input=[{crawl}]"]
    for override in SHORT:
        args += ["-o", override]
    assert main(args) == 0
    run = tmp_path / "resume"
    steps = {"data", "search", "tokenizer", "pretrain", "sft", "rl", "preferences", "reward", "rlhf", "eval"}
    assert {p.parent.name for p in run.glob("*/manifest.json")} == steps
    report = (run / "eval" / "report.md").read_text()
    assert "| metric | pretrain | sft | rl | rlhf |" in report and "## RLHF" in report
    manifests = {step: json.loads((run / step / "manifest.json").read_text()) for step in steps}
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("already finished") == len(steps)

    # a data filter changes: every step below the data step is redone from scratch, nothing is resumed.
    # RLHF may now answer with up to 48 tokens, past every answer its reward models were trained on (sampled
    # with 16 new tokens: 18-20 tokens re-tokenized): beyond their support, so the hacking alarm fires on the
    # first step (between two validations), rolls back to the SFT model's step 0 and stops
    changed = args + ["-o", "data.filters.gopher_min_doc_words=40", "-o", "rlhf.max_new_tokens=48",
                      "-o", "rlhf.eval_every=2", "-o", "rlhf.alarm_support=0.2"]
    assert main(changed) == 0
    redone = {step: json.loads((run / step / "manifest.json").read_text()) for step in steps}
    alarm = redone["rlhf"]["metrics"]["alarm"]
    assert alarm["step"] == 1 and alarm["kept_step"] == 0 and "support" in alarm["reason"]
    assert redone["rlhf"]["metrics"]["steps"] == 1 and redone["rlhf"]["metrics"]["kept_step"] == 0
    rlhf_history = json.loads((run / "rlhf" / "history.json").read_text())
    assert [m["step"] for m in rlhf_history] == [0, 1] and "val/watch" in rlhf_history[1]  # validated as it fired
    assert all(redone[s]["config_hash"] != manifests[s]["config_hash"] for s in steps)
    history = json.loads((run / "pretrain" / "history.json").read_text())
    # trained from step 0: the first report is the first log point (log_every=10), nothing was restored
    assert history[0]["step"] == 10 and all(m["restored_from"] is None for m in history)
    assert redone["pretrain"]["metrics"]["ray_train_run"] != manifests["pretrain"]["metrics"]["ray_train_run"]
    assert redone["rl"]["metrics"]["restored_from"] is None
    assert not list(tmp_path.glob("resume/*.partial")) and not (run / "raylm.lock").exists()

    shutil.rmtree(crawl)  # the raw crawl deleted after cleaning: the finished data step stands for it
    capsys.readouterr()
    assert main(changed) == 0
    assert capsys.readouterr().out.count("already finished") == len(steps)


def test_missing_or_empty_input_fails_cleanly(ray_session, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "--input", str(tmp_path / "nope.warc.gz"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "input path not found" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "crawl.jsonl").write_text('{"url": "https://a.example", "text": ""}\n')
    assert main(["data", "--input", str(empty), "--output", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_output_folder_with_foreign_files_is_left_alone(ray_session, tmp_path, capsys):
    out = tmp_path / "clean"
    out.mkdir()
    (out / "my-notes.txt").write_text("not raylm's")
    inputs = tmp_path / "docs.jsonl"
    inputs.write_text(json.dumps({"url": "https://a.example", "text": "word " * 100}) + "\n")
    assert main(["data", "--input", str(inputs), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "was not written by raylm" in err
    assert [p.name for p in out.iterdir()] == ["my-notes.txt"] and (out / "my-notes.txt").read_text() == "not raylm's"
