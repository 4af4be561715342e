"""The KubeRay manifests in cluster/: valid for KubeRay v1.7.0, by the operator's rules, and right for raylm.

No Kubernetes here. Each manifest is checked as the API server checks it, against the CRD's schema
made strict, then by the operator's cross-field rules ported from KubeRay v1.7.0 (tests/kuberay.py),
then raylm's own contracts: the generated files are current, the RayService serves what `raylm serve`
writes, versions agree with pyproject.toml, every pod gets auth, storage and Serve settings, the
job entry points survive KubeRay's submitter shell, and the cluster preset fits the worker groups.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from raylm.config import load_config
from tests.kuberay import (CLUSTER, CORE_SCHEMAS, CRD_FILES, CRDS, MANIFEST_FILES, ROOT, cel_fields,
                           cluster_specs, crd_schema, doc_schema, docs, env_of, kind_version, load_docs,
                           operator_errors, pod_templates, prepared, schema_errors)


def test_crds_are_there():
    assert all((CRDS / name).is_file() for name in CRD_FILES.values()), f"KubeRay's CRDs are expected in {CRDS}"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_manifest_matches_its_schema(path):
    for doc in load_docs(path):
        assert schema_errors(doc) == [], f"{path.name}: {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in CRD_FILES:  # CEL rules (x-kubernetes-validations) are not evaluated here: use none
            assert cel_fields(doc, crd_schema(*kind_version(doc))) == []
            assert operator_errors(prepared(doc)) == []


def struct_keys(value, schema: dict, path: tuple = ()) -> list[tuple]:
    """Paths of the fields (keys a schema names in `properties`, not keys of a map) in a manifest."""
    found = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        for key, item in value.items():
            if key in props:
                found.append(path + (key,))
            sub = props.get(key, extra)
            found += struct_keys(item, sub, path + (key,)) if sub else []
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += struct_keys(item, schema["items"], path + (i,))
    return found


def at(value, path: tuple):
    for step in path:
        value = value[step]
    return value


def test_misspelled_fields_and_non_string_start_params_are_caught():
    """For every manifest: one field per depth misspelled (a letter dropped), and `num-cpus: 0` as a number."""
    for doc in docs():
        kind, version = kind_version(doc)
        by_depth = {}
        for path in struct_keys(doc, doc_schema(kind, version)):
            by_depth[len(path)] = path  # the last field at each depth
        assert len(by_depth) >= (2 if kind in CORE_SCHEMAS else 8)
        for path in by_depth.values():
            broken = copy.deepcopy(doc)
            parent, key = at(broken, path[:-1]), path[-1]
            typo = key[:len(key) // 2] + key[len(key) // 2 + 1:]
            parent[typo] = parent.pop(key)
            assert any(repr(typo) in error for error in schema_errors(broken)), f"{kind}: {'.'.join(map(str, path))}"
        for spec in cluster_specs(doc) if kind in CRD_FILES else []:
            spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
            assert any("0 is not of type 'string'" in error for error in schema_errors(doc))
            spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = "0"


def test_the_ported_rules_catch_what_they_should():
    """One break per rule family, on otherwise valid manifests: the rule's own message comes back."""
    cluster, job, service = docs("RayCluster")[0], docs("RayJob")[0], docs("RayService")[0]

    def errors_after(doc, change) -> str:
        doc = prepared(doc)
        change(doc)
        return "; ".join(operator_errors(doc))

    def worker(doc, i=0):
        return cluster_specs(doc)[0]["workerGroupSpecs"][i]

    def head_container(doc):
        return cluster_specs(doc)[0]["headGroupSpec"]["template"]["spec"]["containers"][0]

    assert "greater than maxReplicas" in errors_after(cluster, lambda d: worker(d).update(minReplicas=30))
    assert "must be unique" in errors_after(cluster, lambda d: worker(d, 1).update(groupName="cpu"))
    assert "both rayStartParams and Resources" in errors_after(
        cluster, lambda d: worker(d)["rayStartParams"].update({"num-cpus": "8"})
        or worker(d).update(resources={"CPU": "8"}))
    assert "restartPolicy" in errors_after(
        cluster, lambda d: worker(d)["template"]["spec"].update(restartPolicy="Always"))
    assert "2.52.0" in errors_after(cluster, lambda d: d["spec"].update(rayVersion="2.51.0"))
    assert "DNS1035" in errors_after(cluster, lambda d: d["metadata"].update(name="Raylm"))
    assert "TTLSecondsAfterFinished" in errors_after(job, lambda d: d["spec"].update(shutdownAfterJobFinishes=False))
    assert "RuntimeEnvYAML" in errors_after(job, lambda d: d["spec"].update(runtimeEnvYAML="[working_dir"))
    assert "named 'serve'" in errors_after(
        service, lambda d: head_container(d).update(ports=[{"containerPort": 6379, "name": "gcs-server"}]))


def load_render():
    spec = importlib.util.spec_from_file_location("cluster_render", CLUSTER / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_manifests_are_current():
    """cluster/jobs/*.yaml and cluster/rayservice.yaml are exactly what `python cluster/render.py` writes."""
    rendered = load_render().render()
    assert sorted(CLUSTER.glob("jobs/*.yaml")) == sorted(CLUSTER / rel for rel in rendered if rel.startswith("jobs/"))
    for rel, text in rendered.items():
        assert (CLUSTER / rel).read_text() == text, f"cluster/{rel} is stale: run `python cluster/render.py`"
    [cluster] = docs("RayCluster")
    for doc in docs("RayJob") + docs("RayService"):  # every cluster is raycluster.yaml's
        assert cluster_specs(doc) == [cluster["spec"]]


def test_serve_config_v2_is_what_raylm_serve_writes():
    from ray.serve.schema import ServeDeploySchema

    from raylm.serve.deploy import serve_config
    from raylm.storage import Storage

    cfg = load_config("cluster")
    storage = Storage(cfg.storage)
    expected = serve_config(cfg.serve, storage.child(f"{cfg.name}/rl/hf"),
                            storage.child(f"{cfg.name}/search/search.db"))
    [service] = docs("RayService")
    document = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(document)
    assert document == expected
    [configmap] = docs("ConfigMap")  # the jobs write the run where the server reads it
    assert configmap["data"]["RAYLM_STORAGE_URI"] == cfg.storage.uri
    assert {job["spec"]["entrypoint"].split("--name ")[1].split()[0] for job in docs("RayJob")} == {cfg.name}


def test_versions_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [ray_version] = [dep.split("==")[1] for dep in project["dependencies"] if re.match(r"ray\[.*\]==", dep)]
    python = re.fullmatch(r">=(\d+)\.(\d+),<\d+\.\d+", project["requires-python"]).groups()
    images = set()
    for doc in docs():
        for spec in cluster_specs(doc) if doc["kind"] in CRD_FILES else []:
            assert spec["rayVersion"] == ray_version
            images |= {c["image"] for t in pod_templates(spec) for c in t["spec"]["containers"]}
    assert [image.rpartition(":")[2] for image in images] == [project["version"]]  # one image: raylm's, this version
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-py{''.join(python)}-cu\d+$", dockerfile, re.M)
    assert re.search(rf"ray.__version__ == '{re.escape(ray_version)}'", dockerfile)
    [workdir] = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.M)
    for job in docs("RayJob"):  # the jobs run the code the image holds
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"working_dir": workdir}


def test_every_pod_gets_auth_storage_and_serve_settings():
    from raylm.ray_setup import local_ray_env

    serve_env = {key: value for key, value in local_ray_env().items()  # the two a cluster needs; ports are local
                 if key in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")}
    assert len(serve_env) == 2
    # HAProxy through raylm's wrapper, where pip puts console scripts in Ray's image
    serve_env["RAY_SERVE_HAPROXY_BINARY_PATH"] = "/home/ray/anaconda3/bin/raylm-haproxy"
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in docs("Secret")}
    [configmap] = docs("ConfigMap")
    assert {"RAYLM_STORAGE_URI", "AWS_DEFAULT_REGION"} <= set(configmap["data"])
    for doc in docs():
        for spec in cluster_specs(doc) if doc["kind"] in CRD_FILES else []:
            # KubeRay puts RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (the Secret's key auth_token, constant.go:198)
            # into every Ray container, the autoscaler and the job submitter (common/pod.go:387-420).
            assert spec["authOptions"] == {"mode": "token", "secretName": "raylm-ray-token"}
            assert set(secrets["raylm-ray-token"]) == {"auth_token"}
            for template in pod_templates(spec):
                container = template["spec"]["containers"][0]
                assert {k: v for k, v in env_of(container).items() if k.startswith("RAY_SERVE_")} == serve_env
                sources = {(kind, ref["name"]) for item in container["envFrom"] for kind, ref in item.items()}
                assert {("configMapRef", configmap["metadata"]["name"]),
                        ("secretRef", "raylm-storage-credentials")} <= sources
                assert all(kind != "secretRef" or name in secrets for kind, name in sources)
                mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
                volumes = {v["name"]: v for v in template["spec"]["volumes"]}
                key_file = volumes["api-key"]["secret"]  # the server's key as a file (serve.api_key_file)
                assert key_file["secretName"] in secrets and f"{mounts['api-key']}/{key_file['items'][0]['path']}" \
                    == load_config("cluster").serve.api_key_file
    assert set(secrets["raylm-storage-credentials"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert load_config("cluster").serve.require_api_key and set(secrets["raylm-api-key"]) == {"RAYLM_API_KEY"}


def shell_words(command: str, env: dict) -> list[str]:
    """The arguments bash makes of `command` (what a program run that way receives)."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], env={"PATH": "/usr/bin:/bin", **env},
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def test_job_entrypoints_reach_the_head_intact():
    """KubeRay's submitter runs `ray job submit ... -- ENTRYPOINT` in its own bash (common/job.go:204-205),
    which has no RAYLM_STORAGE_URI; `ray job submit` joins the words (subprocess.list2cmdline) and the
    head runs them in a shell where the ConfigMap set it. Then raylm's own CLI must accept them."""
    from raylm.cli import build_parser

    # serve: the RayService; cluster_check: run against a live cluster (raylm cluster check --address)
    scripts = {p.stem for p in (ROOT / "jobs").glob("*.py")} - {"_entry", "serve", "cluster_check"}
    assert {job["metadata"]["name"].removeprefix("raylm-") for job in docs("RayJob")} == scripts
    for job in docs("RayJob"):
        submitted = subprocess.list2cmdline(shell_words(job["spec"]["entrypoint"], {}))
        words = shell_words(submitted, {"RAYLM_STORAGE_URI": "s3://bucket/runs"})
        assert words[0] == "python" and (ROOT / words[1]).is_file()
        step = Path(words[1]).stem
        args = build_parser().parse_args([step, *words[2:]])
        assert args.command == job["metadata"]["name"].removeprefix("raylm-") and args.config == "cluster"
        assert load_config(args.config, args.override).storage.uri == "s3://bucket/runs"
        assert step != "run" or args.no_serve  # the job's cluster goes when it ends: the RayService serves


def test_the_cluster_preset_fits_the_worker_groups():
    """Each step of the cluster preset gets what it asks for from the groups at their maxReplicas."""
    from raylm.data.readers import READ_CPUS

    cfg = load_config("cluster")
    [cluster] = docs("RayCluster")
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # nothing runs on the head

    def capacity(group):  # what `ray start` gets: the Ray container's limits, unless rayStartParams say otherwise
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = str(group["rayStartParams"].get("num-cpus", limits["cpu"]))
        cpus = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        return cpus, int(group["rayStartParams"].get("num-gpus", limits.get("nvidia.com/gpu", 0)))

    groups = {group["groupName"]: (capacity(group), group["maxReplicas"]) for group in spec["workerGroupSpecs"]}
    [((cpu_pod, _), cpu_pods)] = [v for v in groups.values() if v[0][1] == 0]
    [((gpu_pod_cpus, gpu_pod), gpu_pods)] = [v for v in groups.values() if v[0][1] > 0]

    # data: the cleaning pool, and one read task (READ_CPUS) feeding each actor, on the CPU group
    assert cfg.data.num_workers * (cfg.data.worker_cpus + READ_CPUS) <= cpu_pods * cpu_pod
    # pretrain, sft: one GPU and one CPU per Ray Train worker (ScalingConfig's default with use_gpu)
    for train in (cfg.pretrain, cfg.sft):
        assert train.use_gpu and train.num_workers <= gpu_pods * gpu_pod
        assert train.num_workers <= gpu_pods * gpu_pod_cpus
    # rl: the rollout actors and the learner at once; an actor's GPUs come from one pod
    rl = cfg.rl
    assert rl.num_rollout_workers * rl.rollout_gpus + rl.learner_gpus <= gpu_pods * gpu_pod
    assert rl.num_rollout_workers * rl.rollout_cpus + rl.learner_cpus <= gpu_pods * gpu_pod_cpus
    assert max(rl.rollout_gpus, rl.learner_gpus) <= gpu_pod
    # serve: one replica fits one GPU pod, and Serve's autoscaler can reach max_replicas
    serve = cfg.serve
    assert serve.replica_gpus > 0 and serve.replica_gpus <= gpu_pod and serve.replica_cpus <= gpu_pod_cpus
    assert serve.autoscaling.max_replicas * serve.replica_gpus <= gpu_pods * gpu_pod
    assert serve.autoscaling.max_replicas * serve.replica_cpus <= gpu_pods * gpu_pod_cpus
