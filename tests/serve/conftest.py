"""One live Serve app for the serving tests: a scripted model on vLLM, a search index, an API key.

The model is a real GPT checkpoint whose weights follow a script (tests/tools/test_runner.py):
whatever the user asks, it calls `search Veltrane`, reads the result, then answers
" It opened in 1873, after nine years of work by two hundred masons." So the replies are known exactly, and every reply is a tool turn.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.config import ServeConfig, StorageConfig
from raylm.model.hf import save_pretrained
from raylm.ray_setup import free_ports
from raylm.storage import Storage
from raylm.tasks import generate_tasks
from raylm.tokenizer.bpe import load, save, train_bpe
from raylm.tokenizer.chat import CALL_START, RESULT_END, ChatFormat
from raylm.tools.search import build_index
from tests.tools.test_runner import scripted_model

API_KEY = "test-key-123"
# The answer is long (48 tokens) so that it reaches a client in several chunks even when vLLM merges the deltas
# of the engine steps a busy replica did not read in time (a 5-token answer once arrived whole, and a 17-token
# one once did during a full test run on 2 cores).
CALL = "search Veltrane"
ANSWER = (" It opened in 1873, after nine years of work by two hundred masons who cut each grey stone from quarries"
          " upriver; crowds crossed singing on a cold bright morning while bells rang along both banks and children"
          " threw flowers into the water below.")


def free_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="package")
def scripted_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_model")
    texts = [str(t.conversation()) for t in generate_tasks({"identity": 40, "compare": 40}, 0)]
    save(train_bpe(texts + [CALL, ANSWER] * 50, vocab_size=600, min_frequency=1), root / "tok")
    chat = ChatFormat(load(root / "tok"))
    prompt = chat.prompt([{"role": "user", "content": "Hi"}])
    call, answer = chat.text(CALL), chat.text(ANSWER)
    assert len(set(call + answer)) == len(call + answer) > 4, "script tokens must be distinct"
    script = [prompt[-1], chat.special[CALL_START], *call, chat.call_end]
    after_result = [chat.special[RESULT_END], *answer, chat.im_end]
    successor = dict(zip(script, script[1:])) | dict(zip(after_result, after_result[1:]))
    model = scripted_model(successor, chat.tok.get_vocab_size(), max_seq_len=256)
    save_pretrained(model, root / "hf", root / "tok", chat=True)
    kept = root / "kept"
    kept.mkdir()
    pq.write_table(pa.Table.from_pylist([
        {"url": "https://example.org/veltrane", "text": "The Veltrane Bridge opened in 1873 over the river."},
        {"url": "https://example.org/other", "text": "Package managers install software on Debian."}]),
        kept / "part-0.parquet")
    storage = Storage(StorageConfig(uri=str(root)))
    build_index(storage, "kept", root / "search.db")
    return storage.child("hf"), storage.child("search.db"), chat


@pytest.fixture(scope="package")
def served(ray_session, scripted_checkpoint):
    """Base URL of the live app (vLLM engine, API key required); Serve is shut down after the package."""
    from ray import serve

    from raylm.serve.deploy import deploy

    checkpoint, search_db, chat = scripted_checkpoint
    os.environ["RAYLM_API_KEY"] = API_KEY
    try:
        settings = ServeConfig(port=free_port(), stream_interval_ms=0, max_tokens_cap=100, body_timeout_s=2)
        url = deploy(settings, checkpoint, search_db)
    finally:
        del os.environ["RAYLM_API_KEY"]
    yield url, settings, chat
    serve.shutdown()
