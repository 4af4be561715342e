"""KubeRay v1.7.0 as the API server and the operator would see a manifest, without Kubernetes.

    errors = schema_errors(doc)                  # the CRD's openAPIV3Schema, made strict (unknown fields fail)
    errors = operator_errors(prepared(doc))      # the operator's cross-field rules, ported
    docs("RayJob"), cluster_specs(doc), pod_templates(spec), env_of(container)   # reading cluster/

A manifest is checked against the CRD's openAPIV3Schema (../shared/kuberay-crds/) after pruning
nulls and filling in the schema's defaults, but strictly: an object schema with properties also
rejects unknown fields, which the API server would silently drop (a misspelled field would just
vanish). The operator's cross-field rules come from ray-operator/controllers/ray/utils/validation.go
and the webhooks at tag v1.7.0. Used by tests/test_manifests.py.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
MANIFEST_FILES = sorted(CLUSTER.rglob("*.yaml"))


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def docs(kind: str | None = None) -> list[dict]:
    return [doc for path in MANIFEST_FILES for doc in load_docs(path) if kind in (None, doc["kind"])]


def cluster_specs(doc: dict) -> list[dict]:
    """The RayCluster spec inside a RayCluster, RayJob or RayService."""
    spec = doc["spec"]
    return [s for s in (spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec"),
                        spec.get("rayClusterConfig")) if s]


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec.get("workerGroupSpecs", [])]


# --- the CRD schemas, made strict --------------------------------------------------------------------

# metadata is a free-form object in a CRD (the API server checks it on its own); this is the part we use.
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "generateName": {"type": "string"},
                           "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP}}
CORE_SCHEMAS = {  # the two core kinds in cluster/, as much of them as we write
    "ConfigMap": {"type": "object", "required": ["apiVersion", "kind", "metadata", "data"],
                  "additionalProperties": False,
                  "properties": {"apiVersion": {"enum": ["v1"]}, "kind": {"enum": ["ConfigMap"]},
                                 "metadata": METADATA, "data": STRING_MAP}},
    "Secret": {"type": "object", "required": ["apiVersion", "kind", "metadata", "stringData"],
               "additionalProperties": False,
               "properties": {"apiVersion": {"enum": ["v1"]}, "kind": {"enum": ["Secret"]}, "metadata": METADATA,
                              "type": {"type": "string"}, "stringData": STRING_MAP}},
}


def strict(node: dict) -> dict:
    """A copy of a structural schema in which every object with properties rejects unknown fields.

    Left open: objects that say x-kubernetes-preserve-unknown-fields, and maps (additionalProperties
    already given). x-kubernetes-int-or-string takes an integer or a string (controller-gen already
    writes that anyOf; a hand-written CRD may not). nullable allows null."""
    node = dict(node)
    if "properties" in node:
        node["properties"] = {key: strict(sub) for key, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            node[key] = strict(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [strict(sub) for sub in node[key]]
    if node.get("x-kubernetes-int-or-string"):
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    return node


@lru_cache(maxsize=None)
def crd_schema(kind: str, version: str) -> dict:
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [schema] = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    return schema


def doc_schema(kind: str, version: str) -> dict:
    """The schema a whole manifest is checked against: the CRD's, with our metadata schema."""
    if kind in CORE_SCHEMAS:
        return CORE_SCHEMAS[kind]
    schema = crd_schema(kind, version)
    return {**schema, "properties": {**schema["properties"], "metadata": METADATA},
            "required": ["apiVersion", "kind", "metadata", "spec"]}


@lru_cache(maxsize=None)
def validator(kind: str, version: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(strict(doc_schema(kind, version)))


def prepare(value, schema: dict):
    """What the API server stores, in place: nulls pruned (unless nullable), then the schema's defaults."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        for key in [k for k, v in value.items() if v is None and not (props.get(k) or extra or {}).get("nullable")]:
            del value[key]
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = props.get(key, extra)
            if sub:
                prepare(item, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prepare(item, schema["items"])
    return value


def cel_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields that carry x-kubernetes-validations (CEL rules, which only the API server evaluates)."""
    found = [path or "."] if schema.get("x-kubernetes-validations") else []
    if isinstance(value, dict):
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, extra)
            found += cel_fields(item, sub, f"{path}.{key}") if sub else []
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += cel_fields(item, schema["items"], f"{path}[{i}]")
    return found


def kind_version(doc: dict) -> tuple[str, str]:
    return doc.get("kind"), str(doc.get("apiVersion", "")).rpartition("/")[2]


def schema_errors(doc: dict) -> list[str]:
    """Schema violations of one manifest, as `path: message` lines; [] when valid."""
    kind, version = kind_version(doc)
    if kind in CORE_SCHEMAS:
        value = copy.deepcopy(doc)
    elif kind in CRD_FILES and doc["apiVersion"].startswith("ray.io/"):
        value = prepare(copy.deepcopy(doc), crd_schema(kind, version))
    else:
        return [f"no schema for {doc.get('apiVersion')} {kind}"]
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator(kind, version).iter_errors(value)]


# --- the operator's cross-field rules, ported from KubeRay v1.7.0 -------------------------------------
# validation.go below is ray-operator/controllers/ray/utils/validation.go at tag v1.7.0; the line
# numbers are its lines. Rules behind feature gates that are off by default are ported as "the field
# is not set". The Ray container is containers[0] (constant.go:51, RayContainerIndex = 0).

DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # k8s.io/apimachinery validation.IsDNS1035Label
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")  # IsQualifiedName's name part, IsValidLabelValue
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(text))[:3])  # version.ParseGeneric, enough here


def env_of(container: dict) -> dict[str, str | None]:
    return {item["name"]: item.get("value") for item in container.get("env") or []}


def name_errors(kind: str, name: str | None, max_length: int) -> list[str]:
    # validation.go:32-40 (RayCluster, MaxRayClusterNameLength = 53), 533-541 (RayJob, 47),
    # 632-646 (RayService, 47); the lengths are constant.go:372-381. (generateName: the server names it.)
    if name is None:
        return []
    errors = [f"{kind} name should be no more than {max_length} characters"] if len(name) > max_length else []
    return errors + ([] if DNS1035.fullmatch(name) and len(name) <= 63 else [f"{kind} name {name!r} is not DNS1035"])


def label_errors(group: str, labels: dict) -> list[str]:
    # validation.go:71-100 validateRayGroupLabels: Kubernetes label syntax for keys and values
    errors = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if not (LABEL_NAME.fullmatch(name) and len(name) <= 63) or (prefix and not DNS1123_SUBDOMAIN.fullmatch(prefix)):
            errors.append(f"invalid label key for {group} group: {key!r}")
        if value and not (LABEL_NAME.fullmatch(value) and len(value) <= 63):
            errors.append(f"invalid label value for key {key!r} in {group} group: {value!r}")
    return errors


def group_errors(group: str, spec: dict) -> list[str]:
    """validateRayGroupResources (validation.go:59-69) and validateRayGroupLabels (72-100), for one group."""
    params = spec.get("rayStartParams") or {}
    errors = []
    if any(params.get(key) for key in ("num-cpus", "num-gpus", "memory", "resources")) and spec.get("resources"):
        errors.append(f"resource fields should not be set in both rayStartParams and Resources for {group} group")
    if "labels" in params:
        errors.append(f"rayStartParams['labels'] is not supported for {group} group")
    return errors + label_errors(group, spec.get("labels"))


def cluster_spec_errors(spec: dict, annotations: dict) -> list[str]:
    """ValidateRayClusterSpec, validation.go:103-327."""
    errors = []
    head = spec["headGroupSpec"]
    head_containers = head["template"].get("spec", {}).get("containers") or []
    if not head_containers:  # 104-106
        return ["headGroupSpec should have at least one container"]
    head_env = env_of(head_containers[0])
    errors += group_errors("Head", head)  # 108-113
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))  # util.go:751-754 IsAutoscalingEnabled
    options = spec.get("autoscalerOptions") or {}
    v2 = options.get("version") == "v2"  # util.go:756-758 IsAutoscalingV2Enabled
    v2_env = head_env.get("RAY_enable_autoscaler_v2") in ("1", "true")
    ray_version = version_tuple(spec.get("rayVersion", ""))
    for group in spec.get("workerGroupSpecs") or []:
        name = group["groupName"]
        if not group["template"].get("spec", {}).get("containers"):  # 119-121
            errors.append("workerGroupSpec should have at least one container")
            continue
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):  # 125-127
            errors.append(f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled")
        if (low is not None and low < 0) or (high is not None and high < 0):  # 128-133
            errors.append(f"worker group {name} has negative minReplicas or maxReplicas")
        if low is not None and high is not None and low > high:  # 134-138
            errors.append(f"worker group {name} has minReplicas {low} greater than maxReplicas {high}")
        errors += group_errors(name, group)  # 139-144
        idle = group.get("idleTimeoutSeconds")  # 145-147 -> validateWorkerGroupIdleTimeout, 1005-1027
        if idle is not None and (idle < 0 or not (v2 or v2_env)):
            errors.append(f"worker group {name}: idleTimeoutSeconds needs autoscaler v2 and must be non-negative")
        if group.get("priority"):  # 148-150 -> validateWorkerGroupPriority, 1112-1142
            if ray_version < (2, 56, 0) or not (v2 or v2_env):
                errors.append(f"worker group {name}: priority needs Ray >= 2.56.0 and autoscaler v2")
        if group.get("suspend") and autoscaling:  # 197-203 (feature gate off) and 214-220
            errors.append(f"worker group {name} cannot be suspended here")
    ft_enabled = str(annotations.get("ray.io/ft-enabled", "")).lower() == "true" or spec.get("gcsFaultToleranceOptions")
    if not ft_enabled and "RAY_REDIS_ADDRESS" in head_env:  # 158-164 (util.go:765-768)
        errors.append("RAY_REDIS_ADDRESS implicitly enables GCS fault tolerance; set gcsFaultToleranceOptions")
    if (head.get("rayStartParams") or {}).get("redis-username") or "REDIS_USERNAME" in head_env:  # 192-195
        errors.append("cannot set redis username in rayStartParams or environment variables")
    if not autoscaling and v2_env:  # 205-212
        errors.append("RAY_enable_autoscaler_v2 cannot be true when enableInTreeAutoscaling is false")
    if autoscaling and options.get("version") and "RAY_enable_autoscaler_v2" in head_env:  # 222-224
        errors.append("both .spec.autoscalerOptions.version and head Pod env var RAY_enable_autoscaler_v2 are set")
    if autoscaling and v2:  # 226-236: autoscaler v2 replaces failed pods itself
        for template in pod_templates(spec):
            if template.get("spec", {}).get("restartPolicy") not in (None, "", "Never"):
                errors.append("restartPolicy should be Never or unset when using autoscaler v2")
    if (options.get("idleTimeoutSeconds") or 0) < 0:  # 240-245
        errors.append("autoscalerOptions.idleTimeoutSeconds must be non-negative")
    if "KUBERAY_GEN_AUTOSCALER_START_CMD" in env_of(options):  # 252-258
        errors.append("autoscalerOptions.env must not contain KUBERAY_GEN_AUTOSCALER_START_CMD")
    for field in ("historyServerOptions", "networkPolicy", "tlsOptions"):  # 260-266, 316-318, 323-325: gates off
        if spec.get(field) is not None:
            errors.append(f"spec.{field} needs an operator feature gate that is off by default")
    auth = spec.get("authOptions") or {}
    k8s_auth = bool(auth.get("enableK8sTokenAuth"))  # util.go:800-802
    if auth.get("mode") == "token":  # 284-308 (util.go:796-798 IsAuthEnabled)
        if ray_version < (2, 52, 0):
            errors.append("authOptions.mode is 'token': Ray version 2.52.0 or later is required")
        if k8s_auth and (ray_version < (2, 55, 0) or auth.get("secretName")):
            errors.append("enableK8sTokenAuth needs Ray >= 2.55.0 and no authOptions.secretName")
    elif k8s_auth:  # 309-313
        errors.append("authOptions.enableK8sTokenAuth is enabled but authOptions.mode not set to 'token'")
    return errors


def operator_errors(doc: dict) -> list[str]:
    """What the operator (and its webhooks) would reject in one RayCluster, RayJob or RayService."""
    kind, spec, meta = doc["kind"], doc["spec"], doc["metadata"]
    annotations = meta.get("annotations") or {}
    errors = []
    if kind == "RayCluster":
        errors += name_errors(kind, meta.get("name"), 53)
        names = [group["groupName"] for group in spec.get("workerGroupSpecs") or []]
        if len(names) != len(set(names)):  # pkg/webhooks/v1/raycluster_webhook.go:69-80
            errors.append("worker group names must be unique")
        if (spec.get("upgradeStrategy") or {}).get("type") not in (None, "Recreate", "None"):  # validation.go:42-57
            errors.append("Spec.UpgradeStrategy.Type is invalid")
        errors += cluster_spec_errors(spec, annotations)
    elif kind == "RayJob":  # ValidateRayJobSpec, validation.go:543-630
        errors += name_errors(kind, meta.get("name"), 47)
        shutdown, ttl = spec.get("shutdownAfterJobFinishes", False), spec.get("ttlSecondsAfterFinished", 0)
        selector, mode = spec.get("clusterSelector") or {}, spec.get("submissionMode", "K8sJobMode")
        backoff = spec.get("backoffLimit")
        if spec.get("suspend") and not shutdown:  # 547-549
            errors.append("a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended")
        if ttl < 0:  # 551-553
            errors.append("TTLSecondsAfterFinished must be a non-negative integer")
        if not shutdown and ttl > 0:  # 556 -> validateDeletionConfiguration, 753-755
            errors.append("a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished")
        if spec.get("deletionStrategy") is not None:  # 762-765: the RayJobDeletionPolicy gate is off by default
            errors.append("deletionStrategy needs the RayJobDeletionPolicy feature gate")
        if spec.get("suspend") and selector:  # 561-563
            errors.append("the ClusterSelector mode doesn't support the suspend operation")
        if not spec.get("rayClusterSpec") and not selector:  # 564-566
            errors.append("one of RayClusterSpec or ClusterSelector must be set")
        if selector and (not selector.get("ray.io/cluster") or mode == "SidecarMode" or (backoff or 0) > 0):  # 567-578
            errors.append("clusterSelector needs ray.io/cluster, no SidecarMode and no backoffLimit")
        if mode == "InteractiveMode" and (backoff or 0) > 0:  # 587-589
            errors.append("BackoffLimit is incompatible with InteractiveMode")
        if mode == "SidecarMode":  # 591-603
            head_template = spec["rayClusterSpec"]["headGroupSpec"]["template"]
            if spec.get("submitterPodTemplate") or spec.get("submitterConfig") or \
                    head_template.get("spec", {}).get("restartPolicy") not in (None, "", "Never"):
                errors.append("SidecarMode takes no submitter template or config and a head restartPolicy of Never")
        if spec.get("rayClusterSpec"):
            if (spec["rayClusterSpec"].get("authOptions") or {}).get("enableK8sTokenAuth"):  # 605-608
                errors.append("K8s token auth mode is currently not supported for RayJob")
            errors += cluster_spec_errors(spec["rayClusterSpec"], annotations)  # 609-611
        try:  # 616-618: dashboardclient.UnmarshalRuntimeEnvYAML, a YAML mapping (or nothing)
            if not isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}, dict):
                errors.append("runtimeEnvYAML is not a YAML mapping")
        except yaml.YAMLError as err:
            errors.append(f"failed to unmarshal RuntimeEnvYAML: {err}")
        for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):  # 619-624
            if spec.get(field) is not None and spec[field] <= 0:
                errors.append(f"{field} must be a positive integer")
        if backoff is not None and backoff < 0:  # 625-627
            errors.append("backoffLimit must be a positive integer")
    elif kind == "RayService":  # ValidateRayServiceSpec, validation.go:680-715
        errors += name_errors(kind, meta.get("name"), 47)
        cluster = spec["rayClusterConfig"]
        if (cluster.get("authOptions") or {}).get("enableK8sTokenAuth"):  # 681-683
            errors.append("K8s token auth mode is currently not supported for RayService")
        errors += cluster_spec_errors(cluster, annotations)  # 685-687
        if ((cluster["headGroupSpec"].get("headService") or {}).get("metadata") or {}).get("name"):  # 689-691
            errors.append("spec.rayClusterConfig.headGroupSpec.headService.metadata.name should not be set")
        upgrade = (spec.get("upgradeStrategy") or {}).get("type")
        if upgrade not in (None, "None", "NewCluster", "NewClusterWithIncrementalUpgrade"):  # 694-700
            errors.append(f"Spec.UpgradeStrategy.Type value {upgrade} is invalid")
        if (spec.get("rayClusterDeletionDelaySeconds") or 0) < 0:  # 702-705
            errors.append("Spec.RayClusterDeletionDelaySeconds should be a non-negative integer")
        # controllers/ray/common/service.go:214-231: Serve's Kubernetes service needs a head port named
        # "serve" (or "serve-..."), unless spec.serveService is given; a head without ports gets the
        # default ports, serve among them (403-417, 436-443).
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        ports = [port.get("name", "") for port in head.get("ports") or []]
        if ports and not spec.get("serveService") and not any(p == "serve" or p.startswith("serve-") for p in ports):
            errors.append("specify a port named 'serve' in the Ray head container")
    return errors


def prepared(doc: dict) -> dict:
    return prepare(copy.deepcopy(doc), crd_schema(*kind_version(doc)))
