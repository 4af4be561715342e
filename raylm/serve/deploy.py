"""Deploy the server on Ray Serve, and write the same deployment as a Serve config file.

    raylm serve --checkpoint runs/tiny/rl/hf --port 8000      # local Ray: serves until Ctrl-C
    serve deploy serve_config.yaml                            # the same app on a cluster (written to storage)

`build(args)` is the application builder both use (`import_path` in the config
file); `deploy` runs it here with the replica options from `ServeConfig`
(autoscaling, per-replica concurrency bound, CPUs/GPUs). The checkpoint and the
search index are named by their URIs in the run's storage (with its S3 options),
so a replica on any node finds them. The API key never goes into the file nor
into Ray's runtime env (the dashboard shows both): on a cluster replicas read it
from a mounted Secret (`serve.api_key_file`) or their pod's env; a local
`raylm serve` hands its $RAYLM_API_KEY over in a file only this user can read.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time

import yaml

from raylm.config import ServeConfig
from raylm.storage import Storage

APP_NAME = "raylm"


def deployment_options(settings: ServeConfig) -> dict:
    scaling = settings.autoscaling
    return {
        "max_ongoing_requests": settings.max_ongoing_requests,     # the per-replica concurrency bound
        "max_queued_requests": settings.max_queued_requests,       # beyond it: 503, not an ever-growing queue
        "autoscaling_config": {"min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                               "initial_replicas": max(scaling.min_replicas, 1),
                               "target_ongoing_requests": scaling.target_ongoing_requests},
        "ray_actor_options": {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus,
                              "resources": dict(settings.replica_resources)},
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": 5,
    }


def build(args: dict, env: dict | None = None):
    """Serve application builder: args = {checkpoint, settings (ServeConfig as a dict), search_db, storage}."""
    from raylm.serve.app import ChatServer

    settings = ServeConfig.model_validate(args.get("settings", {}))
    options = deployment_options(settings)
    if env:
        options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
    return ChatServer.options(**options).bind(str(args["checkpoint"]), settings.model_dump(), args.get("search_db"),
                                              args.get("storage"))


def app_args(settings: ServeConfig, checkpoint: Storage, search_db: Storage | None) -> dict:
    """The builder's arguments: URIs, plus the storage options (endpoint, region) without the URI."""
    storage = checkpoint.cfg.model_dump(exclude={"uri", "cache_dir"}, exclude_none=True)
    return {"checkpoint": checkpoint.uri(), "settings": settings.model_dump(),
            "search_db": search_db.uri() if search_db else None, "storage": storage}


def serve_config(settings: ServeConfig, checkpoint: Storage, search_db: Storage | None) -> dict:
    """The Serve config (`serve deploy`'s schema, a RayService's serveConfigV2) of this deployment."""
    options = deployment_options(settings)
    return {
        "proxy_location": settings.proxy_location,
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": "raylm.serve.deploy:build",
            "args": app_args(settings, checkpoint, search_db),
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib),
                                         "TOKENIZERS_PARALLELISM": "false"}},
            "deployments": [{"name": "ChatServer", **options}],
        }],
    }


def write_serve_config(settings: ServeConfig, checkpoint: Storage, search_db: Storage | None, out: Storage,
                       rel: str) -> str:
    """serve_config() written to `rel` in storage, for `serve deploy`; returns its URI."""
    document = serve_config(settings, checkpoint, search_db)
    header = (f"# raylm serve config, written {time.strftime('%Y-%m-%d %H:%M')}: `serve deploy serve_config.yaml`.\n"
              f"# Replicas read the API key from ${settings.api_key_env}; set it in the cluster's env.\n"
              f"# Serve's throughput mode and HAProxy ingress need RAY_SERVE_THROUGHPUT_OPTIMIZED=1 and\n"
              f"# RAY_SERVE_ENABLE_HA_PROXY=1 in every node's env (raylm.ray_setup.local_ray_env sets them for a local Ray).\n")
    out.write_text(rel, header + yaml.safe_dump(document, sort_keys=False))
    return out.uri(rel)


def deploy(settings: ServeConfig, checkpoint: Storage, search_db: Storage | None, port: int | None = None,
           local: bool = True) -> str:
    """Start Serve's proxy and deploy the app (Ray must be initialised); returns the base URL once it is ready.

    `local`: a Ray on this machine, whose replicas can read this shell's $RAYLM_API_KEY from a private file
    here; a cluster's replicas, on other nodes, read their key from their own pods (serve.api_key_file)."""
    from ray import serve

    port = port or settings.port
    env = {"VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib), "TOKENIZERS_PARALLELISM": "false",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    if local and not settings.api_key_file and (key_file := private_key_file(settings)):
        settings = settings.model_copy(update={"api_key_file": key_file})
    serve.start(http_options={"host": settings.host, "port": port}, proxy_location=settings.proxy_location)
    application = build(app_args(settings, checkpoint, search_db), env)
    start = time.perf_counter()
    print(f"[serve] deploying {checkpoint} ({settings.engine} engine) ...", flush=True)
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(f"[serve] ready in {time.perf_counter() - start:.0f} s", flush=True)
    return f"http://{host}:{port}"


KEY_FOLDERS: list[str] = []  # private_key_file's folders, removed at exit (or by raylm serve's own stop)


@atexit.register
def remove_private_key_files() -> None:
    while KEY_FOLDERS:
        shutil.rmtree(KEY_FOLDERS.pop(), ignore_errors=True)


def private_key_file(settings: ServeConfig) -> str | None:
    """This shell's $RAYLM_API_KEY in a file only this user can read, for the replicas of a local Ray (which
    may not share this process's env); removed when this process exits. None when the variable is unset."""
    key = os.environ.get(settings.api_key_env)
    if key is None:
        return None
    folder = tempfile.mkdtemp(prefix="raylm-key-")  # mode 0700
    KEY_FOLDERS.append(folder)
    path = os.path.join(folder, "api-key")
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(key)
    return path


def how_to_query(url: str, settings: ServeConfig) -> str:
    key = f' -H "Authorization: Bearer ${settings.api_key_env}"' if os.environ.get(settings.api_key_env) else ""
    return "\n".join([
        f"raylm is serving '{settings.model_name}' at {url}",
        f"  chat page:  {url}/",
        f"  curl:       curl {url}/v1/chat/completions -H 'Content-Type: application/json'{key} \\",
        f"                -d '{{\"model\": \"{settings.model_name}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"Which is larger, 9.11 or 9.9?\"}}]}}'",
        f"  python:     OpenAI(base_url='{url}/v1', api_key='...').chat.completions.create("
        f"model='{settings.model_name}', messages=[...], stream=True)",
    ])
