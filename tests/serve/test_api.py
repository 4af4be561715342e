"""The OpenAI-compatible API, driven by the official `openai` client against a live local Serve app."""

from __future__ import annotations

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from raylm.serve.assistant import default_system
from tests.serve.conftest import ANSWER, API_KEY, CALL

USER = [{"role": "user", "content": "When did the Veltrane Bridge open?"}]


@pytest.fixture(scope="module")
def client(served) -> OpenAI:
    url, _, _ = served
    return OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)


def test_chat_completion_runs_the_search_tool(client, served):
    _, settings, chat = served
    reply = client.chat.completions.create(model="raylm", messages=USER, temperature=0)
    choice = reply.choices[0]
    assert choice.message.content == ANSWER and choice.finish_reason == "stop"
    trace = choice.message.model_extra["tool_trace"]
    assert [(t["name"], t["argument"]) for t in trace] == [("search", CALL.split(" ", 1)[1])]
    assert "opened in 1873" in trace[0]["result"] and "example.org/veltrane" in trace[0]["result"]
    # sampled: the call (name, argument, 2 markers) and the answer with <|im_end|>; the tool result is not sampled
    assert reply.usage.completion_tokens == len(chat.text(CALL)) + 2 + len(chat.text(ANSWER)) + 1
    # read: the prompt (default system message + question) and the tool result the server inserted
    prompt = chat.prompt([{"role": "system", "content": default_system(settings, has_search=True)}, *USER])
    assert reply.usage.prompt_tokens == len(prompt) + len(chat.tool_result(trace[0]["result"]))


def test_system_prompt_default_and_override(client, served):
    _, settings, chat = served

    def prompt_tokens(reply) -> int:  # the prompt's share of usage: less the tool result's tokens
        result = reply.choices[0].message.model_extra["tool_trace"][0]["result"]
        return reply.usage.prompt_tokens - len(chat.tool_result(result))

    default = client.chat.completions.create(model="raylm", messages=USER)
    identity = default_system(settings, has_search=True)
    assert prompt_tokens(default) == len(chat.prompt([{"role": "system", "content": identity}, *USER]))
    custom = [{"role": "system", "content": "You are Ada, made by Lovelace Labs."}, *USER]
    override = client.chat.completions.create(model="raylm", messages=custom)
    assert prompt_tokens(override) == len(chat.prompt(custom)) != prompt_tokens(default)


def test_streaming_sends_tool_events_then_the_answer(client):
    chunks = list(client.chat.completions.create(model="raylm", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    events = [d.model_extra["tool_event"] for d in deltas if d.model_extra.get("tool_event")]
    assert [e["type"] for e in events] == ["call", "result"] and events[0]["name"] == "search"
    text = [d.content for d in deltas if d.content]
    assert "".join(text) == ANSWER and len(text) > 1  # token by token (stream_interval_ms=0 here)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_models_completions_and_max_tokens_cap(client, served):
    assert [m.id for m in client.models.list().data] == ["raylm"]
    completion = client.completions.create(model="raylm", prompt="The bridge", max_tokens=3)
    assert completion.object == "text_completion" and completion.usage.completion_tokens <= 3
    capped = client.chat.completions.create(model="raylm", messages=USER, max_tokens=100_000)
    assert capped.choices[0].message.content == ANSWER  # cut to serve.max_tokens_cap, not refused
    short = client.chat.completions.create(model="raylm", messages=USER, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
])
def test_bad_requests_get_openai_400s(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**{"model": "raylm", "messages": USER, **kwargs})
    body = err.value.body
    assert body["type"] == "invalid_request_error" and body["param"].startswith(param)
    assert "Traceback" not in body["message"]


def test_too_long_input_unknown_model_and_bad_json(client, served):
    url, _, _ = served
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="raylm", messages=[{"role": "user", "content": "bridge " * 400}])
    assert err.value.body["code"] == "context_length_exceeded" and "256 tokens" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=USER)
    assert err.value.body["code"] == "model_not_found"
    response = httpx.post(f"{url}/v1/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"].endswith("not valid JSON")


def test_api_key_is_required(served):
    url, _, _ = served
    with pytest.raises(openai.AuthenticationError) as err:
        OpenAI(base_url=f"{url}/v1", api_key="wrong-key", max_retries=0).chat.completions.create(
            model="raylm", messages=USER)
    assert err.value.body["code"] == "invalid_api_key"
    response = httpx.get(f"{url}/v1/models")  # no key at all
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "engine": "vllm"}  # health needs no key


def test_serve_config_file_builds_the_same_app(served, scripted_checkpoint, tmp_path):
    from raylm.config import StorageConfig
    from raylm.serve.deploy import build, write_serve_config
    from raylm.storage import Storage

    _, settings, _ = served
    checkpoint, search_db, _ = scripted_checkpoint
    out = Storage(StorageConfig(uri=str(tmp_path)))
    uri = write_serve_config(settings, checkpoint, search_db, out, "serve/serve_config.yaml")
    path = tmp_path / "serve" / "serve_config.yaml"
    assert uri == str(path)
    app = yaml.safe_load(path.read_text())["applications"][0]
    assert app["args"]["checkpoint"] == checkpoint.uri() and app["args"]["search_db"] == search_db.uri()
    assert app["import_path"] == "raylm.serve.deploy:build"
    deployment = app["deployments"][0]
    assert deployment["max_ongoing_requests"] == settings.max_ongoing_requests
    assert deployment["autoscaling_config"]["max_replicas"] == settings.autoscaling.max_replicas
    assert API_KEY not in path.read_text()
    assert build(app["args"]) is not None  # the builder `serve deploy` calls accepts the file's args


def test_torch_engine_replica_and_tool_round_limit(served, scripted_checkpoint):
    """The fallback engine behind the same API; with max_tool_rounds=0 the call is not run and the turn ends."""
    from ray import serve

    from raylm.config import ServeConfig
    from raylm.serve.deploy import app_args, build

    url, _, chat = served
    checkpoint, search_db, _ = scripted_checkpoint
    settings = ServeConfig(engine="torch", max_tool_rounds=0, replica_cpus=0.5)
    serve.run(build(app_args(settings, checkpoint, search_db)), name="torch", route_prefix="/torch")
    try:
        client = OpenAI(base_url=f"{url}/torch/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="raylm", messages=USER)
        assert reply.choices[0].message.content == "" and reply.choices[0].finish_reason == "stop"
        assert "tool_trace" not in reply.choices[0].message.model_extra
        assert reply.usage.completion_tokens == len(chat.text(CALL)) + 2  # stopped at <|/tool_call|>
        assert httpx.get(f"{url}/torch/health").json()["engine"] == "torch"
    finally:
        serve.delete("torch")


def test_serve_cli_rejects_a_missing_checkpoint(tmp_path, capsys):
    from raylm.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "nope"), "-o", f"storage.uri={tmp_path}"]) == 2
    assert "no HF checkpoint (config.json)" in capsys.readouterr().err


def test_haproxy_serves_only_the_api_to_the_network(served):
    """Serve's HAProxy (started through raylm-haproxy): its stats page and metrics listen on loopback only,
    and its admin socket is private to this user (Ray's own config binds them to every interface, mode 666)."""
    import os
    import re
    import stat

    import psutil

    url, settings, _ = served
    haproxies = [p for p in psutil.Process().children(recursive=True) if p.name() == "haproxy"]
    assert haproxies  # one per config reload while the old one drains
    listening = set()
    for haproxy in haproxies:
        config = haproxy.cmdline()[haproxy.cmdline().index("-f") + 1]
        assert config.endswith(".raylm")  # the hardened copy (raylm/serve/lifecycle.py)
        [socket_path] = re.findall(r"stats socket (\S+) mode 600", open(config).read())
        assert stat.S_IMODE(os.stat(socket_path).st_mode) & 0o077 == 0
        listening |= {c.laddr for c in haproxy.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert any(a.port == int(url.rsplit(":", 1)[1]) for a in listening) and len(listening) >= 3  # API, stats, metrics
    assert all(a.ip == "127.0.0.1" for a in listening), listening
