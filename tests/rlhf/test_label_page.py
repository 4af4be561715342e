"""The labeling page on real Ray Serve, driven in headless chromium: rank by keys, by dragging; the database
holds exactly the implied pairs.

    python -m pytest tests/rlhf/test_label_page.py -q      # about half a minute (Serve start, chromium)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from raylm.config import RunConfig
from raylm.ray_setup import free_ports
from raylm.rlhf.labels import LabelStore, NewItem, default_url, ranking_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def label_page(ray_session, tmp_path_factory):
    """The page over a fresh database of 2 items with 4 answers each; Serve goes when the module is done."""
    from ray import serve

    from raylm.rlhf.label_app import APP_NAME, deploy_label_page

    url = default_url(tmp_path_factory.mktemp("labels") / "labels.db")
    store = LabelStore(url)
    store.add_items([NewItem([{"role": "user", "content": f"Write a poem about the {subject}."}],
                             [f"{subject} poem {j}" for j in range(4)], "ckpt-test", {"subject": subject})
                     for subject in ("river", "moon")])
    cfg = RunConfig()
    cfg.preferences.port = free_ports(1)[0]
    page_url = deploy_label_page(url, cfg)
    yield page_url, store
    serve.delete(APP_NAME)
    if not serve.status().applications:  # Serve's proxy keeps its port: the next test's serve.start needs a fresh one
        serve.shutdown()


def call(url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def shown(page) -> list[int]:
    return [int(a) for a in page.locator(".answer").evaluate_all("els => els.map(e => e.dataset.answer)")]


def open_as(chromium, url: str, name: str):
    page = chromium.new_context().new_page()  # a context of its own: its own localStorage
    response = page.goto(f"{url}/")
    assert "script-src 'sha256-" in response.headers["content-security-policy"]
    page.fill("#name", name)
    page.press("#name", "Enter")
    page.wait_for_selector("#item:not([hidden]) .answer")
    return page


def test_two_labelers_rank_by_keys_and_by_dragging(chromium, label_page):
    url, store = label_page
    alice = open_as(chromium, url, "alice")
    first = int(alice.get_attribute("#item", "data-id"))
    assert alice.inner_text("#prompt").endswith("Write a poem about the river.")
    assert shown(alice) == [0, 1, 2, 3] and alice.is_disabled("#submit")
    alice.keyboard.press("3")
    assert shown(alice)[0] == 2 and alice.inner_text(".answer.picked .rank") == "#1"
    alice.reload()                                  # the name, the leased item and the picks survive a reload
    alice.wait_for_selector("#item:not([hidden]) .answer")
    assert alice.is_hidden("#login") and int(alice.get_attribute("#item", "data-id")) == first
    assert shown(alice) == [2, 0, 1, 3]

    bob = open_as(chromium, url, "bob")            # alice holds the first item: bob gets the next one
    second = int(bob.get_attribute("#item", "data-id"))
    assert second != first and bob.inner_text("#prompt").endswith("Write a poem about the moon.")

    for key in "1", "4", "2":
        alice.keyboard.press(key)
    assert shown(alice) == [2, 0, 3, 1]
    alice.keyboard.press("Backspace")               # undo picks answer 4 back out ...
    assert alice.locator(".answer.picked").count() == 2
    alice.keyboard.press("4")                       # ... and again; the last one left is implied
    assert [alice.inner_text(f".answer:nth-child({i}) .rank") for i in (1, 2, 3, 4)] == ["#1", "#2", "#3", "#4"]
    alice.keyboard.press("Enter")
    alice.wait_for_selector("#done:not([hidden])")   # the other item is bob's
    assert {(p.chosen, p.rejected) for p in store.pairs() if p.labeler == "alice"} == set(ranking_pairs([2, 0, 3, 1]))
    assert {(p.chosen, p.rejected) for p in store.pairs()} == {(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)}
    assert [(p.item_id, p.labeler) for p in store.pairs()] == [(first, "alice")] * 6

    bob.locator(".answer[data-answer='3']").drag_to(bob.locator(".answer[data-answer='0']"))
    assert shown(bob) == [3, 0, 1, 2] and bob.inner_text(".answer:nth-child(1) .rank") == "#1"
    bob.keyboard.press("Enter")
    bob.wait_for_selector("#done:not([hidden])")
    assert [(r.item.id, r.labeler, r.labeler_kind, r.order) for r in store.rankings()] == [
        (first, "alice", "human", [2, 0, 3, 1]), (second, "bob", "human", [3, 0, 1, 2])]
    bob.wait_for_selector("#progress:has-text('you ranked 1')")
    assert bob.inner_text("#progress").startswith("0 of 2 items open")


def test_the_api_takes_json_only_and_answers_errors_as_json(label_page):
    url, _ = label_page
    assert call(f"{url}/health") == (200, {"status": "ok", "items": 2})
    status, body = call(f"{url}/api/rank", b"item_id=1", "application/x-www-form-urlencoded")
    assert status == 415 and "application/json" in body["error"]["message"]
    status, body = call(f"{url}/api/rank", json.dumps({"item_id": 1, "labeler": "eve", "order": [0, 0, 1, 2]}).encode())
    assert status == 400 and "each answer index 0..3 once" in body["error"]["message"]
    status, body = call(f"{url}/api/flag", json.dumps({"item_id": "1", "labeler": "eve"}).encode())
    assert status == 400 and body["error"]["message"].startswith("item_id:")
    status, body = call(f"{url}/api/skip", b"x" * 70_000)
    assert status == 413
    status, body = call(f"{url}/api/next")
    assert status == 400 and "labeler name" in body["error"]["message"]
    assert call(f"{url}/api/nothing")[0] == 404
