#!/usr/bin/env python3
"""Checks of the Kubernetes packaging of KalamDB that need no cluster.

  python3 charts/check_chart.py [--strict]

1. The chart's CRDs (charts/kalamdb/crds/*.yaml) are byte-identical to the generated ones in
   crds/*.yaml (written by `kalam-operator crd`), and those follow notes of the CRD spec:
   group, version, scope, names, short names, status subresource, printer columns, fields.
2. charts/kalamdb/values.yaml validates against charts/kalamdb/values.schema.json (draft-07),
   the schema rejects a few bad values, and the KalamCluster the chart would create from the
   default values validates against the KalamCluster CRD.
3. Every object of examples/*.yaml validates against the openAPIV3Schema of its CRD (unknown
   fields are errors, as with kubectl's strict field validation), and the examples refer to
   each other consistently (clusterRef, credentialsSecretRef, database names).
4. When a `helm` binary is found (PATH, or $HELM): `helm lint --strict`, `helm template` of
   several value sets, parsed as YAML and checked (operator Deployment, RBAC, Services, the
   optional KalamCluster, the CRDs of --include-crds), values the schema must refuse, and the
   NOTES of a client-side dry-run install. Without helm this part is skipped (and is a failure
   with --strict).

Needs PyYAML (`pip install pyyaml`) and jsonschema (`pip install jsonschema`); without
jsonschema the schema checks are skipped (a failure with --strict). Exit code 0 when every
check passed, 1 when one failed, 2 when PyYAML is missing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    print("check_chart: PyYAML is missing: python3 -m pip install pyyaml", file=sys.stderr)
    sys.exit(2)

try:
    import jsonschema
except ImportError:  # pragma: no cover - depends on the machine
    jsonschema = None

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kalamdb"
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"

GROUP = "kalamdb.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# What the CRD spec (notes/crd-spec.md) says about each kind.
CRD_SPEC = {
    "KalamCluster": {
        "plural": "kalamclusters",
        "short": "kc",
        "columns": {"Phase", "Ready", "Replicas", "Endpoint", "Age"},
        "spec": {"image", "imagePullPolicy", "replicas", "storage", "resources", "config",
                 "jwtSecretRef", "podDisruptionBudget"},
        "status": {"phase", "replicas", "readyReplicas", "endpoint", "jwtSecretName",
                   "observedGeneration", "conditions"},
    },
    "KalamNamespace": {
        "plural": "kalamnamespaces",
        "short": "kns",
        "columns": {"Database", "Tables", "Ready", "Age"},
        "spec": {"clusterRef", "name", "options", "deletionPolicy"},
        "status": {"databaseName", "tableCount", "tables", "observedGeneration", "conditions"},
    },
    "StorageLocation": {
        "plural": "storagelocations",
        "short": "ksl",
        "columns": {"Location", "Type", "Usage", "Ready", "Age"},
        "spec": {"clusterRef", "name", "type", "path", "credentialsSecretRef", "deletionPolicy"},
        "status": {"locationName", "usageCount", "tables", "observedGeneration", "conditions"},
    },
}
CRD_FILES = sorted(f"{v['plural']}.{GROUP}.yaml" for v in CRD_SPEC.values())

OPERATOR_OWNED_CONFIG_KEYS = {"listen", "data_dir", "credentials_dir", "jwt_secret", "node_id"}
CREDENTIAL_KEYS_REQUIRED = {"access_key_id", "secret_access_key"}
CREDENTIAL_KEYS_OPTIONAL = {"region", "endpoint"}
DB_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class Report:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok    {what}")

    def fail(self, what: str, details: list[str] | str | None = None) -> None:
        self.failed.append(what)
        print(f"FAIL  {what}")
        if isinstance(details, str):
            details = [details]
        for d in details or []:
            print(f"        {d}")

    def check(self, what: str, problems: list[str]) -> bool:
        if problems:
            self.fail(what, problems)
            return False
        self.ok(what)
        return True

    def skip(self, what: str, why: str) -> None:
        if self.strict:
            self.fail(f"{what} (--strict: {why})")
        else:
            self.skipped.append(what)
            print(f"skip  {what}: {why}")


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def load_yaml_docs(path: Path) -> list:
    with path.open("rb") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def json_path(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


# ---------------------------------------------------------------------------------------------
# OpenAPI v3 (structural, Kubernetes flavour) -> JSON Schema draft 4
# ---------------------------------------------------------------------------------------------

def k8s_to_jsonschema(schema: dict, root: bool = True) -> dict:
    """Turns a CRD's openAPIV3Schema into a draft-4 JSON schema that rejects what the API server
    (with kubectl's strict field validation) would reject, as far as a static check can:
    unknown fields are errors unless x-kubernetes-preserve-unknown-fields; fields with a
    default are not required (the API server defaults before it validates); nullable allows
    null; int-or-string allows both. CEL rules (x-kubernetes-validations) are not checked."""
    if not isinstance(schema, dict):
        return schema
    s = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            s[key] = {k: k8s_to_jsonschema(v, False) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            s[key] = k8s_to_jsonschema(value, False) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            s[key] = [k8s_to_jsonschema(v, False) for v in value]
        else:
            s[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string") and "type" not in s and "anyOf" not in s:
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if root:
        props = s.setdefault("properties", {})
        for k in ("apiVersion", "kind"):
            props.setdefault(k, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if ("properties" in s and "additionalProperties" not in s
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False
    if "required" in s and "properties" in s:
        req = [r for r in s["required"] if "default" not in s["properties"].get(r, {})]
        if req:
            s["required"] = req
        else:
            del s["required"]
    if schema.get("nullable"):
        s = {"anyOf": [{"type": "null"}, s]}
    return s


def schema_errors(validator, instance, prefix: str) -> list[str]:
    errs = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{prefix}{json_path(e.absolute_path)}: {e.message}" for e in errs]


# ---------------------------------------------------------------------------------------------
# 1. CRDs
# ---------------------------------------------------------------------------------------------

def check_crd_copies(r: Report) -> None:
    chart_crds = CHART / "crds"
    problems = []
    generated = sorted(p.name for p in CRDS.glob("*.yaml")) if CRDS.is_dir() else []
    copies = sorted(p.name for p in chart_crds.glob("*.yaml")) if chart_crds.is_dir() else []
    if not generated:
        problems.append(f"{rel(CRDS)}/ holds no *.yaml (generate them: kalam-operator crd)")
    for name in CRD_FILES:
        if name not in generated:
            problems.append(f"{rel(CRDS)}/{name} is missing")
        if name not in copies:
            problems.append(f"{rel(chart_crds)}/{name} is missing")
    for name in sorted(set(generated) | set(copies)):
        a, b = CRDS / name, chart_crds / name
        if not a.exists():
            problems.append(f"{rel(b)} has no counterpart in {rel(CRDS)}/")
            continue
        if not b.exists():
            if name not in CRD_FILES:
                problems.append(f"{rel(a)} is not copied to {rel(chart_crds)}/")
            continue
        da, db = a.read_bytes(), b.read_bytes()
        if da != db:
            la, lb = da.decode(errors="replace").splitlines(), db.decode(errors="replace").splitlines()
            line = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
            problems.append(f"{rel(b)} differs from {rel(a)} (first at line {line + 1}); "
                            f"fix: cp {rel(CRDS)}/*.yaml {rel(chart_crds)}/")
    r.check("chart CRDs are byte-identical copies of crds/*.yaml", problems)


def load_crds(r: Report) -> dict:
    """kind -> CRD object, from crds/*.yaml; checks each against the CRD spec."""
    crds = {}
    for path in sorted(CRDS.glob("*.yaml")) if CRDS.is_dir() else []:
        try:
            docs = load_yaml_docs(path)
        except yaml.YAMLError as e:
            r.fail(f"{rel(path)} parses as YAML", str(e))
            continue
        if not docs:
            r.fail(f"{rel(path)} holds a CRD",
                   "the file is empty (a placeholder): generate it with "
                   "KALAM_UPDATE_CRDS=1 cargo test -p kalam-operator --test it crds_up_to_date, "
                   "then cp crds/*.yaml charts/kalamdb/crds/")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                r.fail(f"{rel(path)} holds only CustomResourceDefinitions",
                       f"found kind {doc.get('kind') if isinstance(doc, dict) else type(doc).__name__}")
                continue
            kind = doc.get("spec", {}).get("names", {}).get("kind")
            crds[kind] = doc
            check_crd_against_spec(r, path, doc)
    for kind in CRD_SPEC:
        if kind not in crds:
            r.fail(f"crds/ defines {kind}", "no CustomResourceDefinition of that kind in crds/*.yaml")
    return crds


def check_crd_against_spec(r: Report, path: Path, crd: dict) -> None:
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    kind = names.get("kind")
    want = CRD_SPEC.get(kind)
    p = []
    if want is None:
        r.fail(f"{rel(path)}: known kind", f"kind {kind!r} is not one of {sorted(CRD_SPEC)}")
        return
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1":
        p.append(f"apiVersion is {crd.get('apiVersion')!r}, want apiextensions.k8s.io/v1")
    if crd.get("metadata", {}).get("name") != f"{want['plural']}.{GROUP}":
        p.append(f"metadata.name is {crd.get('metadata', {}).get('name')!r}, want {want['plural']}.{GROUP}")
    if path.name != f"{want['plural']}.{GROUP}.yaml":
        p.append(f"file name should be {want['plural']}.{GROUP}.yaml")
    if spec.get("group") != GROUP:
        p.append(f"spec.group is {spec.get('group')!r}, want {GROUP}")
    if spec.get("scope") != "Namespaced":
        p.append(f"spec.scope is {spec.get('scope')!r}, want Namespaced")
    if names.get("plural") != want["plural"]:
        p.append(f"names.plural is {names.get('plural')!r}, want {want['plural']}")
    if want["short"] not in (names.get("shortNames") or []):
        p.append(f"names.shortNames {names.get('shortNames')} lacks {want['short']!r}")
    versions = {v.get("name"): v for v in spec.get("versions", [])}
    v = versions.get(VERSION)
    if v is None:
        p.append(f"no version {VERSION} (has {sorted(versions)})")
    else:
        if not v.get("served") or not v.get("storage"):
            p.append(f"{VERSION} must be served and the storage version")
        if "status" not in (v.get("subresources") or {}):
            p.append(f"{VERSION} has no status subresource")
        cols = {c.get("name") for c in v.get("additionalPrinterColumns") or []}
        if not want["columns"] <= cols:
            p.append(f"printer columns {sorted(cols)} lack {sorted(want['columns'] - cols)}")
        root = (v.get("schema") or {}).get("openAPIV3Schema") or {}
        props = root.get("properties") or {}
        spec_props = set((props.get("spec") or {}).get("properties") or {})
        status_props = set((props.get("status") or {}).get("properties") or {})
        if not want["spec"] <= spec_props:
            p.append(f"spec lacks fields {sorted(want['spec'] - spec_props)}")
        if not want["status"] <= status_props:
            p.append(f"status lacks fields {sorted(want['status'] - status_props)}")
    r.check(f"{rel(path)} follows the CRD spec ({kind})", p)


def crd_validator(crd: dict):
    for v in crd["spec"]["versions"]:
        if v.get("name") == VERSION:
            schema = k8s_to_jsonschema(v["schema"]["openAPIV3Schema"])
            jsonschema.Draft4Validator.check_schema(schema)
            return jsonschema.Draft4Validator(schema)
    raise KeyError(VERSION)


# ---------------------------------------------------------------------------------------------
# 2. values.yaml and values.schema.json
# ---------------------------------------------------------------------------------------------

def load_values() -> tuple[dict, dict]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    return values, schema


# (description, dotted path, bad value): each must be refused by values.schema.json.
BAD_VALUES = [
    ("a pull policy that does not exist", "image.pullPolicy", "Sometimes"),
    ("operator replicas that are not a number", "operator.replicas", "two"),
    ("a metrics port out of range", "metrics.port", 70000),
    ("a cluster of 0 replicas", "cluster.spec.replicas", 0),
    ("a cluster of 17 replicas", "cluster.spec.replicas", 17),
    ("an operator-owned config key", "cluster.spec.config", {"listen": "0.0.0.0:9"}),
    ("a config value that is a list", "cluster.spec.config", {"cors_allowed_origins": ["*"]}),
    ("a storage size that is no quantity", "cluster.spec.storage.size", "ten gigs"),
    ("an unknown top-level key", "operatr", {}),
    ("a cluster name that is no DNS label", "cluster.name", "Chat_DB"),
    ("leaderElection.enabled that is a string", "leaderElection.enabled", "yes"),
    ("leaderElection.enabled=false (the operator cannot run without a Lease)",
     "leaderElection.enabled", False),
    ("a storage size with an exponent (the CRD pattern refuses it)", "cluster.spec.storage.size", "1e9"),
]


def set_path(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def cluster_from_values(values: dict, release: str = "kalamdb", namespace: str = "default") -> dict:
    """The KalamCluster that templates/cluster.yaml renders (kept in step with it; helm
    template checks the real rendering when helm is there)."""
    c = values["cluster"]
    tag = values["image"].get("tag") or yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image = c.get("image") or f"{values['image']['repository']}:{tag}"
    return {
        "apiVersion": API_VERSION,
        "kind": "KalamCluster",
        "metadata": {"name": c.get("name") or release, "namespace": namespace},
        "spec": {"image": image, **copy.deepcopy(c.get("spec") or {})},
    }


def check_values(r: Report, crds: dict) -> None:
    try:
        values, schema = load_values()
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        r.fail("values.yaml and values.schema.json parse", str(e))
        return
    r.ok("values.yaml and values.schema.json parse")
    if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
        r.fail("values.schema.json declares draft-07", f"$schema is {schema.get('$schema')!r}")
    if jsonschema is None:
        r.skip("values.yaml validates against values.schema.json",
               "the jsonschema module is not importable (python3 -m pip install jsonschema)")
        return
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        r.fail("values.schema.json is a valid draft-07 schema", e.message)
        return
    r.ok("values.schema.json is a valid draft-07 schema")
    validator = jsonschema.Draft7Validator(schema)
    r.check("values.yaml validates against values.schema.json",
            schema_errors(validator, values, "values."))
    loose = []
    for what, path, bad in BAD_VALUES:
        v = copy.deepcopy(values)
        set_path(v, path, bad)
        if validator.is_valid(v):
            loose.append(f"accepts {what} ({path}={json.dumps(bad)})")
    r.check(f"values.schema.json refuses {len(BAD_VALUES)} kinds of bad values", loose)
    ok_variants = [("cluster.create", True), ("operator.replicas", 2),
                   ("cluster.spec.jwtSecretRef", {"name": "my-jwt"}),
                   ("cluster.spec.storage.storageClassName", "fast")]
    refused = []
    for path, good in ok_variants:
        v = copy.deepcopy(values)
        set_path(v, path, good)
        refused += [f"{path}={json.dumps(good)}: {e}" for e in schema_errors(validator, v, "values.")]
    r.check("values.schema.json accepts valid variants", refused)
    if "KalamCluster" in crds:
        try:
            cv = crd_validator(crds["KalamCluster"])
        except Exception as e:  # noqa: BLE001 - report any schema trouble
            r.fail("the KalamCluster CRD schema is usable", str(e))
            return
        obj = cluster_from_values(values)
        r.check("the KalamCluster of the default values validates against its CRD",
                schema_errors(cv, obj, "KalamCluster."))


# ---------------------------------------------------------------------------------------------
# 3. examples/
# ---------------------------------------------------------------------------------------------

def check_examples(r: Report, crds: dict) -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    if not files:
        r.fail("examples/*.yaml exist", f"no YAML files in {rel(EXAMPLES)}/")
        return
    objects = []  # (file, doc)
    for path in files:
        try:
            docs = load_yaml_docs(path)
        except yaml.YAMLError as e:
            r.fail(f"{rel(path)} parses as YAML", str(e))
            continue
        if not docs:
            r.fail(f"{rel(path)} holds objects", "the file is empty")
        objects += [(path, d) for d in docs]
    validators = {}
    have_js = jsonschema is not None
    if not have_js:
        r.skip("examples validate against their CRDs' openAPIV3Schema",
               "the jsonschema module is not importable (python3 -m pip install jsonschema)")
    seen = {}
    for path, doc in objects:
        p = []
        if not isinstance(doc, dict):
            r.fail(f"{rel(path)}: an object", f"a YAML document is a {type(doc).__name__}")
            continue
        kind, api = doc.get("kind"), doc.get("apiVersion")
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        label = f"{rel(path)}: {kind}/{name}"
        if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            p.append(f"metadata.name {name!r} is not a DNS subdomain name")
        if (kind, name) in seen:
            p.append(f"{kind}/{name} is also defined in {rel(seen[(kind, name)])}")
        seen[(kind, name)] = path
        if api == API_VERSION:
            crd = crds.get(kind)
            if crd is None:
                p.append(f"no CRD for kind {kind} in crds/")
            elif have_js:
                try:
                    validators.setdefault(kind, crd_validator(crd))
                    p += schema_errors(validators[kind], doc, "")
                except Exception as e:  # noqa: BLE001
                    p.append(f"the {kind} CRD schema is not usable: {e}")
            p += semantic_problems(doc)
        elif api and api.split("/")[0] == GROUP:
            p.append(f"apiVersion {api} is not the served version {API_VERSION}")
        elif api == "v1" and kind in ("Secret", "ConfigMap"):
            p += core_problems(doc)
        else:
            p.append(f"no schema here to check {api} {kind} against")
        r.check(f"{label} is valid", p)
    r.check("examples refer to each other consistently", cross_ref_problems(objects))


def semantic_problems(doc: dict) -> list[str]:
    """Rules of the CRD spec that the openAPI schema may not express."""
    p = []
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    name = (doc.get("metadata") or {}).get("name", "")
    if kind == "KalamCluster":
        if not isinstance(name, str) or len(name) > 40 or not DNS_LABEL.match(name):
            p.append("a KalamCluster name must be a short DNS label (it names Services, "
                     "a StatefulSet and PVCs data-<name>-<i>)")
        owned = OPERATOR_OWNED_CONFIG_KEYS & set(spec.get("config") or {})
        if owned:
            p.append(f"spec.config sets operator-owned keys {sorted(owned)} (Degraded InvalidSpec)")
    for field in ("config", "options"):
        m = spec.get(field) or {}
        for k, v in (m.items() if isinstance(m, dict) else []):
            if isinstance(v, (dict, list)) or v is None:
                p.append(f"spec.{field}.{k} must be a string, a number or a boolean "
                         f"(else Degraded InvalidSpec)")
    if kind in ("KalamNamespace", "StorageLocation"):
        db = spec.get("name") or name
        if not isinstance(db, str) or len(db) > 63 or not DB_NAME.match(db):
            p.append(f"database name {db!r} (spec.name, else metadata.name) must match "
                     f"{DB_NAME.pattern}, at most 63 characters (else Degraded InvalidName)")
    return p


def core_problems(doc: dict) -> list[str]:
    p = []
    for field in ("data", "stringData"):
        m = doc.get(field)
        if m is None:
            continue
        if not isinstance(m, dict):
            p.append(f"{field} must be a map")
            continue
        for k, v in m.items():
            if not isinstance(v, str):
                p.append(f"{field}.{k} must be a string (quote numbers and booleans)")
            if not re.match(r"^[-._a-zA-Z0-9]+$", str(k)):
                p.append(f"{field} key {k!r} is not a valid key")
    extra = set(doc) - {"apiVersion", "kind", "metadata", "data", "stringData", "type",
                        "immutable", "binaryData"}
    if extra:
        p.append(f"unknown fields {sorted(extra)}")
    return p


def cross_ref_problems(objects) -> list[str]:
    p = []
    by_kind: dict = {}
    for path, doc in objects:
        if isinstance(doc, dict):
            by_kind.setdefault(doc.get("kind"), {})[(doc.get("metadata") or {}).get("name")] = doc
    clusters = by_kind.get("KalamCluster", {})
    secrets = by_kind.get("Secret", {})
    db_names: dict = {}
    for kind in ("KalamNamespace", "StorageLocation"):
        for name, doc in by_kind.get(kind, {}).items():
            spec = doc.get("spec") or {}
            ref = (spec.get("clusterRef") or {}).get("name")
            if ref not in clusters:
                p.append(f"{kind}/{name}: clusterRef {ref!r} is no KalamCluster of examples/")
            key = (kind, ref, spec.get("name") or name)
            if key in db_names:
                p.append(f"{kind}/{name} and {kind}/{db_names[key]} name the same database "
                         f"object {key[2]!r} (ResourceConflict)")
            db_names[key] = name
    for name, doc in by_kind.get("StorageLocation", {}).items():
        spec = doc.get("spec") or {}
        ref = (spec.get("credentialsSecretRef") or {}).get("name")
        if spec.get("type") == "s3" and not str(spec.get("path", "")).startswith("s3://"):
            p.append(f"StorageLocation/{name}: an s3 location's path starts with s3://")
        if ref is None:
            continue
        secret = secrets.get(ref)
        if secret is None:
            p.append(f"StorageLocation/{name}: credentialsSecretRef {ref!r} is no Secret of examples/")
            continue
        keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
        if not CREDENTIAL_KEYS_REQUIRED <= keys:
            p.append(f"Secret/{ref} lacks {sorted(CREDENTIAL_KEYS_REQUIRED - keys)}")
        extra = keys - CREDENTIAL_KEYS_REQUIRED - CREDENTIAL_KEYS_OPTIONAL
        if extra:
            p.append(f"Secret/{ref} has keys the operator does not project: {sorted(extra)}")
    for name, doc in clusters.items():
        ref = ((doc.get("spec") or {}).get("jwtSecretRef") or {}).get("name")
        if ref is not None and ref not in secrets:
            p.append(f"KalamCluster/{name}: jwtSecretRef {ref!r} is no Secret of examples/")
    return p


# ---------------------------------------------------------------------------------------------
# 4. helm
# ---------------------------------------------------------------------------------------------

def find_helm() -> str | None:
    return os.environ.get("HELM") or shutil.which("helm")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


RELEASE, NAMESPACE = "kalamdb", "kalamdb-system"

# Rules the operator's ClusterRole must grant: (apiGroup, resource) -> verbs, exactly.
WANT_CLUSTER_RULES = {}
for _res in ("kalamclusters", "kalamnamespaces", "storagelocations"):
    WANT_CLUSTER_RULES[(GROUP, _res)] = {"get", "list", "watch", "patch", "update"}
    WANT_CLUSTER_RULES[(GROUP, f"{_res}/status")] = {"patch", "update"}
    WANT_CLUSTER_RULES[(GROUP, f"{_res}/finalizers")] = {"update"}
# Server-side apply creates and patches what a cluster owns; owner references delete it.
_OWNED = {"get", "list", "watch", "create", "patch"}
WANT_CLUSTER_RULES.update({
    ("apps", "statefulsets"): _OWNED,
    ("", "services"): _OWNED,
    ("", "configmaps"): _OWNED,
    ("", "secrets"): _OWNED,
    # A PodDisruptionBudget no longer wanted is deleted by the operator.
    ("policy", "poddisruptionbudgets"): _OWNED | {"delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "events"): {"create", "patch"},
})
WANT_LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "patch"}}


def flatten_rules(rules) -> tuple[dict, list[str]]:
    got, p = {}, []
    for rule in rules or []:
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            p.append(f"unexpected rule {rule}")
        for g in rule.get("apiGroups") or []:
            for res in rule.get("resources") or []:
                got.setdefault((g, res), set()).update(rule.get("verbs") or [])
    for (g, res), verbs in got.items():
        if "*" in (g, res) or "*" in verbs:
            p.append(f"wildcard in rule {g}/{res} {sorted(verbs)}")
    return got, p


def compare_rules(got: dict, want: dict, what: str) -> list[str]:
    p = []
    for key in sorted(set(got) | set(want)):
        g, v = got.get(key, set()), want.get(key, set())
        if g != v:
            name = f"{key[0] or 'core'}/{key[1]}"
            if g - v:
                p.append(f"{what}: {name} grants more than needed: {sorted(g - v)}")
            if v - g:
                p.append(f"{what}: {name} lacks {sorted(v - g)}")
    return p


def render(helm: str, sets: list[str], extra: list[str] | None = None) -> tuple[list, str | None]:
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE] + (extra or [])
    for s in sets:
        cmd += ["--set", s]
    res = run(cmd)
    if res.returncode != 0:
        return [], f"`{' '.join(cmd[1:])}` failed: {res.stderr.strip()}"
    try:
        return [d for d in yaml.safe_load_all(res.stdout) if d is not None], None
    except yaml.YAMLError as e:
        return [], f"the output of `{' '.join(cmd[1:])}` is not YAML: {e}"


def check_rendered(docs: list, values: dict, crds: dict) -> list[str]:
    """Checks one rendering against the values it was rendered with."""
    p = []
    objs: dict = {}
    for d in docs:
        if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind") \
                or not (d.get("metadata") or {}).get("name"):
            p.append(f"a rendered document lacks apiVersion, kind or metadata.name: {str(d)[:120]}")
            continue
        key = (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
        if key in objs:
            p.append(f"{key} is rendered twice")
        objs[key] = d
        ns = d["metadata"].get("namespace")
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition") \
                and ns != NAMESPACE:
            p.append(f"{d['kind']}/{d['metadata']['name']} is in namespace {ns!r}, want {NAMESPACE}")
    kinds = [k for (k, _, _) in objs]
    port = int(values["metrics"]["port"])
    deps = [o for (k, _, _), o in objs.items() if k == "Deployment"]
    if len(deps) != 1:
        p.append(f"{len(deps)} Deployments rendered, want 1")
        return p
    dep = deps[0]
    tpl = dep["spec"]["template"]
    sel = dep["spec"]["selector"]["matchLabels"]
    labels = tpl["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in sel.items()):
        p.append("the Deployment's selector does not match its pod labels")
    if labels.get("app.kubernetes.io/name") == "kalamdb":
        p.append("operator pods carry app.kubernetes.io/name=kalamdb: a cluster's Services would select them")
    if dep["spec"].get("replicas") != values["operator"]["replicas"]:
        p.append(f"Deployment replicas {dep['spec'].get('replicas')}, want {values['operator']['replicas']}")
    pod = tpl["spec"]
    c = pod["containers"][0]
    if c.get("command") != ["kalam-operator"]:
        p.append(f"operator command is {c.get('command')}, want ['kalam-operator']")
    args = c.get("args") or []
    if args[:3] != ["run", "--metrics-listen", f"0.0.0.0:{port}"]:
        p.append(f"operator args start {args[:3]}, want run --metrics-listen 0.0.0.0:{port}")
    lease_name = values["leaderElection"].get("leaseName") or "kalam-operator"
    for flag, want in (("--lease-namespace", "$(POD_NAMESPACE)"), ("--lease-name", lease_name)):
        if flag not in args or args[args.index(flag) + 1:][:1] != [want]:
            p.append(f"operator args lack {flag} {want}")
    env = {e["name"]: e for e in c.get("env") or []}
    for var, fp in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if ((env.get(var) or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") != fp:
            p.append(f"env {var} is not fieldRef {fp}")
    ports = {pp.get("name"): pp.get("containerPort") for pp in c.get("ports") or []}
    for probe in ("livenessProbe", "readinessProbe"):
        h = (c.get(probe) or {}).get("httpGet") or {}
        pport = ports.get(h.get("port"), h.get("port"))
        if h.get("path") != "/healthz" or pport != port:
            p.append(f"{probe} is not GET /healthz on port {port}")
    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        p.append("operator container may run as root")
    if sc.get("readOnlyRootFilesystem") is not True:
        p.append("operator root filesystem is not read-only")
    if sc.get("allowPrivilegeEscalation") is not False:
        p.append("operator allows privilege escalation")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        p.append("operator does not drop ALL capabilities")
    sa = pod.get("serviceAccountName")
    if values["serviceAccount"]["create"] != (("ServiceAccount", sa, NAMESPACE) in objs):
        p.append(f"ServiceAccount {sa} rendered != serviceAccount.create")
    rbac = values["rbac"]["create"]
    crs = [o for (k, _, _), o in objs.items() if k == "ClusterRole"]
    if rbac != bool(crs):
        p.append(f"ClusterRole rendered={bool(crs)} with rbac.create={rbac}")
    for cr in crs:
        got, pr = flatten_rules(cr.get("rules"))
        p += pr + compare_rules(got, WANT_CLUSTER_RULES, "ClusterRole")
    roles = [o for (k, _, _), o in objs.items() if k == "Role"]
    if rbac != bool(roles):
        p.append(f"lease Role rendered={bool(roles)} with rbac.create={rbac}")
    for role in roles:
        got, pr = flatten_rules(role.get("rules"))
        p += pr + compare_rules(got, WANT_LEASE_RULES, "Role")
    for (k, n, _), b in objs.items():
        if k in ("ClusterRoleBinding", "RoleBinding"):
            ref = b["roleRef"]
            want_kind = "ClusterRole" if k == "ClusterRoleBinding" else "Role"
            if ref.get("kind") != want_kind or not any(
                    kk == want_kind and nn == ref.get("name") for (kk, nn, _) in objs):
                p.append(f"{k}/{n} refers to a {ref.get('kind')} {ref.get('name')} that is not rendered")
            if [s.get("name") for s in b.get("subjects") or []] != [sa]:
                p.append(f"{k}/{n} does not bind ServiceAccount {sa}")
    svcs = [o for (k, n, _), o in objs.items() if k == "Service"]
    if values["metrics"]["service"]["enabled"] != bool(svcs):
        p.append(f"metrics Service rendered={bool(svcs)} with metrics.service.enabled")
    for s in svcs:
        if any(labels.get(k) != v for k, v in (s["spec"].get("selector") or {}).items()):
            p.append(f"Service/{s['metadata']['name']} does not select the operator pods")
        tp = [pp.get("targetPort") for pp in s["spec"].get("ports") or []]
        if tp != ["metrics"] or "metrics" not in ports:
            p.append(f"Service/{s['metadata']['name']} targetPort {tp} is not the metrics port")
    kcs = [o for (k, _, _), o in objs.items() if k == "KalamCluster"]
    if values["cluster"]["create"] != bool(kcs):
        p.append(f"KalamCluster rendered={bool(kcs)} with cluster.create={values['cluster']['create']}")
    if kcs and "KalamCluster" in crds and jsonschema is not None:
        v = crd_validator(crds["KalamCluster"])
        for kc in kcs:
            p += schema_errors(v, kc, f"rendered KalamCluster/{kc['metadata']['name']}: ")
            if kc["spec"] != cluster_from_values(values, RELEASE, NAMESPACE)["spec"]:
                p.append("rendered KalamCluster.spec differs from cluster_from_values() "
                         "(keep check_chart.py in step with templates/cluster.yaml)")
    unexpected = set(kinds) - {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                               "Role", "RoleBinding", "Service", "KalamCluster",
                               "CustomResourceDefinition"}
    if unexpected:
        p.append(f"unexpected kinds rendered: {sorted(unexpected)}")
    return p


# (name, --set values) of the renderings checked.
SCENARIOS = [
    ("defaults", []),
    ("with a cluster", ["cluster.create=true", "cluster.name=chat",
                        "cluster.spec.storage.storageClassName=fast",
                        "cluster.spec.config.sync_writes=true"]),
    ("two operator replicas, port 9090", ["operator.replicas=2", "metrics.port=9090"]),
    ("no RBAC, no ServiceAccount, no metrics Service, another Lease",
     ["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=existing",
      "metrics.service.enabled=false", "leaderElection.leaseName=kalam-operator-b"]),
    ("a release name of its own, an image tag", ["fullnameOverride=kdb", "image.tag=dev",
                                                 "cluster.create=true"]),
]

# --set values the chart must refuse (values.schema.json).
BAD_SETS = ["cluster.spec.replicas=0", "image.pullPolicy=Sometimes",
            "cluster.spec.config.node_id=x", "metrics.port=0", "leaderElection.enabled=false"]


def values_with(sets: list[str]) -> dict:
    values, _ = load_values()
    for s in sets:
        path, raw = s.split("=", 1)
        set_path(values, path, yaml.safe_load(raw))
    return values


def check_helm(r: Report, crds: dict) -> None:
    helm = find_helm()
    if helm is None:
        r.skip("helm lint and helm template", "no helm binary on PATH (nor $HELM)")
        return
    res = run([helm, "version", "--short"])
    print(f"      helm: {helm} {res.stdout.strip() or res.stderr.strip()}")
    for sets in ([], ["cluster.create=true"]):
        cmd = [helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        for s in sets:
            cmd += ["--set", s]
        res = run(cmd)
        r.check(f"helm lint --strict {' '.join('--set ' + s for s in sets)}".rstrip(),
                [] if res.returncode == 0 else (res.stdout + res.stderr).strip().splitlines())
    for name, sets in SCENARIOS:
        docs, err = render(helm, sets)
        if err:
            r.fail(f"helm template ({name})", err)
            continue
        r.check(f"helm template ({name}): {len(docs)} objects, as the values say",
                check_rendered(docs, values_with(sets), crds))
    docs, err = render(helm, [], ["--include-crds"])
    if err:
        r.fail("helm template --include-crds", err)
    else:
        rendered = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "CustomResourceDefinition"}
        want = {d["metadata"]["name"]: d for d in crds.values()}
        if not want:
            problems = ["crds/ holds no CRD to compare with (see above)"]
        elif sorted(rendered) != sorted(want):
            problems = [f"rendered {sorted(rendered)}, crds/ has {sorted(want)}"]
        else:
            problems = [f"{n} differs from crds/" for n in sorted(want) if rendered[n] != want[n]]
        r.check(f"helm template --include-crds renders the {len(want)} CRDs of crds/", problems)
    accepted = []
    for s in BAD_SETS:
        _, err = render(helm, [s])
        if err is None:
            accepted.append(f"helm template --set {s} succeeded; the schema should refuse it")
    r.check(f"helm refuses {len(BAD_SETS)} bad --set values", accepted)
    _, err = render(helm, ["leaderElection.enabled=false"], ["--skip-schema-validation"])
    r.check("the templates themselves refuse leaderElection.enabled=false",
            [] if err and "always elects a leader" in err else
            [f"helm template --skip-schema-validation --set leaderElection.enabled=false: {err or 'succeeded'}"])
    with tempfile.TemporaryDirectory() as tmp:
        env_cmd = [helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE]
        res = subprocess.run(env_cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
    notes = res.stdout.split("NOTES:", 1)[1] if "NOTES:" in res.stdout else ""
    missing = [w for w in ("chat-jwt", "jwt_secret", "base64 -d", "kalamdb token --user admin --admin",
                           "port-forward svc/chat 8080", "/api/sql", "kalam subscribe") if w not in notes]
    r.check("NOTES.txt (helm install --dry-run=client) tells how to get a token and connect",
            [] if res.returncode == 0 and not missing else
            [f"exit {res.returncode}: {res.stderr.strip()}"] + [f"NOTES lack {w!r}" for w in missing])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strict", action="store_true",
                    help="a missing jsonschema module or helm binary is a failure, not a skip")
    args = ap.parse_args()
    r = Report(args.strict)
    print(f"check_chart: {rel(CHART)}, {rel(CRDS)}/, {rel(EXAMPLES)}/ "
          f"(jsonschema {'yes' if jsonschema else 'no'}, helm {find_helm() or 'no'})")
    check_crd_copies(r)
    crds = load_crds(r)
    check_values(r, crds)
    check_examples(r, crds)
    check_helm(r, crds)
    print()
    for f in r.failed:
        print(f"failed: {f}")
    print(f"check_chart: {r.passed} passed, {len(r.failed)} failed, {len(r.skipped)} skipped")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
