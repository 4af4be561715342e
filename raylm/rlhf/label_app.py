"""The labeling page on Ray Serve: people rank the k sampled answers of a prompt, into the label database.

    raylm label                                   # local Ray, the page at http://127.0.0.1:8001 until Ctrl-C
    url = deploy_label_page(store_url, cfg)       # the same from code (Ray initialised); serve.delete(APP_NAME)
    python -m pytest tests/rlhf/test_label_page.py -q     # headless chromium ranks by keys and by dragging

Routes (JSON only; errors as {"error": {"message": ...}}, 400 for what the store refuses):

    GET  /                           the page (raylm/rlhf/static/label.html; strict CSP, no outside resources)
    GET  /health                     200 while the database answers
    GET  /api/next?labeler=NAME      {"item": {id, messages, answers}}, or {"item": null, "done": true}
    POST /api/rank                   {item_id, labeler, order}: answer indices best -> worst
    POST /api/skip, /api/flag        {item_id, labeler, note}
    GET  /api/stats[?labeler=NAME]   the store's counts, items still open, and how many NAME ranked

The /api routes take the same API key as `raylm serve` when one is configured (serve.api_key_file, or
$RAYLM_API_KEY handed to the replica in a private file), and pass the same guards before a byte of a
body is parsed. Store calls run in a thread: SQLite waits on its lock, the event loop must not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from ray import serve

from raylm.config import RunConfig, ServeConfig
from raylm.errors import InputError
from raylm.rlhf.labels import LabelStore
from raylm.serve.guards import authorize, install_error_handlers, load_api_key, page_headers, read_body, require_json
from raylm.serve.protocol import APIError

log = logging.getLogger("ray.serve")
APP_NAME = "raylm-label"
PAGE = Path(__file__).parent / "static" / "label.html"
MAX_BODY = 64 * 1024  # a ranking or a flag note is a few hundred bytes

app = FastAPI(title="raylm labels", docs_url=None, redoc_url=None, openapi_url=None)


class RankBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: StrictInt
    labeler: str
    order: list[StrictInt]


class VerdictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: StrictInt
    labeler: str
    note: str = Field("", max_length=2000)


install_error_handlers(app)


@serve.deployment(name="LabelPage", num_replicas=1, max_ongoing_requests=32, graceful_shutdown_timeout_s=2,
                  # a page over a database is I/O, not compute: it must start beside a model on a 2-CPU laptop
                  ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class LabelPage:
    def __init__(self, store_url: str, overlap: int, lease_s: float, settings: dict):
        self.settings = ServeConfig.model_validate(settings)
        self.api_key = load_api_key(self.settings)  # a configured key that cannot be read stops the replica
        self.store = LabelStore(store_url)
        self.overlap, self.lease_s = overlap, lease_s
        self.page = PAGE.read_text()
        self.page_headers = page_headers(self.page)

    async def _call(self, fn, *args, **kwargs):
        """A store call in a thread; what the store refuses (a bad order, an unknown item) is a 400."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ValueError as err:
            raise APIError(400, str(err)) from None

    async def _body(self, request: Request, model: type[BaseModel]) -> BaseModel:
        authorize(request, self.api_key)
        require_json(request)
        raw = await read_body(request, MAX_BODY, self.settings.body_timeout_s)
        try:
            return model.model_validate_json(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise APIError(400, f"{where}: {first['msg']}", param=where) from None

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers=self.page_headers)

    @app.get("/health")
    async def health(self) -> JSONResponse:
        try:
            items = await asyncio.to_thread(self.store.count_items)
        except Exception as err:  # the database is gone or locked past its timeout: say so, do not crash
            return JSONResponse({"status": f"database error: {type(err).__name__}"}, status_code=503)
        return JSONResponse({"status": "ok", "items": items})

    @app.get("/api/next")
    async def next_item(self, request: Request, labeler: str = "") -> dict:
        authorize(request, self.api_key)
        item = await self._call(self.store.next_item, labeler, self.overlap, self.lease_s)
        if item is None:
            return {"item": None, "done": True}
        return {"item": {"id": item.id, "messages": item.messages, "answers": item.answers}}

    @app.post("/api/rank")
    async def rank(self, request: Request) -> dict:
        body = await self._body(request, RankBody)
        return {"pairs": await self._call(self.store.submit_ranking, body.item_id, body.labeler, body.order)}

    @app.post("/api/skip")
    async def skip(self, request: Request) -> dict:
        body = await self._body(request, VerdictBody)
        await self._call(self.store.skip, body.item_id, body.labeler)
        return {"ok": True}

    @app.post("/api/flag")
    async def flag(self, request: Request) -> dict:
        body = await self._body(request, VerdictBody)
        await self._call(self.store.flag, body.item_id, body.labeler, body.note)
        return {"ok": True}

    @app.get("/api/stats")
    async def stats(self, request: Request, labeler: str = "") -> dict:
        authorize(request, self.api_key)
        stats = await self._call(self.store.stats)
        stats["open"] = await self._call(self.store.count_open, self.overlap)
        if labeler:
            stats["you"] = await self._call(self.store.ranked_by, labeler)
        return stats


def deploy_label_page(store_url: str, cfg: RunConfig) -> str:
    """Serve's proxy on preferences.host/port (when this Ray has no Serve yet) and the page as its own app at
    "/"; returns the base URL once the replica is up. Ray must be initialised."""
    from raylm.serve.deploy import private_key_file

    prefs, settings = cfg.preferences, cfg.serve
    if not settings.api_key_file and (key_file := private_key_file(settings)):  # this shell's $RAYLM_API_KEY
        settings = settings.model_copy(update={"api_key_file": key_file})
    serve.start(http_options={"host": prefs.host, "port": prefs.port}, proxy_location=settings.proxy_location)
    page = LabelPage.bind(store_url, prefs.overlap, prefs.lease_s, settings.model_dump())
    serve.run(page, name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if prefs.host in ("0.0.0.0", "::") else prefs.host
    return f"http://{host}:{prefs.port}"


def serve_label_page(cfg: RunConfig, store_url: str) -> int:
    """`raylm label`: a local Ray of its own, the page, and everything of that Ray stopped on Ctrl-C (the
    same lifecycle as `raylm serve`, raylm/cli.py). Exits the process when done."""
    from raylm.cli import arm_stop_signals, stop_local_server
    from raylm.ray_setup import init_ray, on_cluster
    from raylm.serve.lifecycle import LocalRayProcesses, port_holder

    prefs = cfg.preferences
    if on_cluster(cfg):  # Serve's one proxy there belongs to the chat app; the database may be remote anyway
        raise InputError("raylm label runs its page on a local Ray: unset RAY_ADDRESS and ray.address "
                         "(the label database can stay remote: preferences.database_url)")
    if holder := port_holder(prefs.host, prefs.port):
        raise InputError(f"port {prefs.port} on {prefs.host} is taken by {holder}: stop it or pass --port")
    processes, code = LocalRayProcesses(), 0
    arm_stop_signals()
    try:
        init_ray(cfg)
        arm_stop_signals()  # Ray's driver installs a SIGTERM handler of its own: ours again
        start = time.perf_counter()
        url = deploy_label_page(store_url, cfg)
        print(f"[label] the labeling page is at {url}/ (ready in {time.perf_counter() - start:.0f} s); "
              f"{prefs.overlap} labeler(s) per item; Ctrl-C stops it", flush=True)
        if cfg.serve.api_key_file or cfg.serve.api_key_env in os.environ:
            print(f"[label] the page asks for the API key (${cfg.serve.api_key_env})", flush=True)
        while processes.raylet_alive():
            time.sleep(1)
        print("[label] Ray's raylet is gone: stopping", flush=True)
        code = 1
    except (KeyboardInterrupt, SystemExit):
        print("\n[label] shutting down", flush=True)
    except Exception as err:  # the deployment failed: its processes must not outlive this one either
        print(f"raylm label: error: {err}", file=sys.stderr, flush=True)
        code = 1
    stop_local_server(processes, code)
    return code
