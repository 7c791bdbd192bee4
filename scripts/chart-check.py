#!/usr/bin/env python3
"""Checks charts/nodewright offline; scripts/check-manifests.sh runs it.

For the default values and every value set in charts/nodewright/ci/*.yaml, and for each
Kubernetes version given: `helm lint --strict` (no error, no warning), render as an install,
assert what the chart promises (RBAC, webhook wiring per certificate mode, hardened pods, the
nodewright config, the second scheduler's config), check the kinds no Kubernetes schema covers
(ServiceMonitor, PrometheusRule, cert-manager Issuer/Certificate, the KubeSchedulerConfiguration
in its ConfigMap) structurally, run `promtool check rules` on the alerts and
`nodewright plan` on the rendered config (when the binary exists). Each rendered set (plus the
CRDs) is written to OUT/<set>@<version>.yaml and listed in OUT/manifests.txt ("FILE VERSION"
lines) for check-manifests.sh to validate against the Kubernetes schemas.

Once: the CRD in crds/ equals webhook-config/crds/, every ci/invalid/*.yaml is refused (by
values.schema.json or a template check) with the message its "# expect:" line names, the chart
refuses a cluster older than its kubeVersion, the dashboard and the alerts query only metrics
src/metrics.rs defines, the alerts' capacity codes are src/cloud/launch/retry.rs's, and README.md's
values table is up to date (scripts/chart-readme.py).

Prints one "ok"/"FAIL" line per value set and check; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

try:
    import helm_python as helm
    from helm_python import _native as helm_native
except ImportError:  # pragma: no cover - reported to the user
    sys.exit("chart-check: helm-python-sdk is missing; run scripts/setup-test-deps.sh")

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "nodewright"
DEFAULT_RELEASE = ("nodewright", "nodewright")

CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "CustomResourceDefinition", "Namespace", "PriorityClass",
}
SYSTEM_NAMESPACES = ["kube-system", "kube-public", "kube-node-lease"]
# The extenders stanza fields kube-scheduler knows (kubescheduler.config.k8s.io/v1 Extender).
EXTENDER_FIELDS = {
    "urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "bindVerb", "weight", "enableHTTPS",
    "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources", "ignorable",
}
EXTENDER_TLS_FIELDS = {"insecure", "serverName", "certFile", "keyFile", "caFile", "certData", "keyData", "caData"}
KUBE_SCHEDULER_CONFIG_FIELDS = {
    "apiVersion", "kind", "parallelism", "leaderElection", "clientConnection", "percentageOfNodesToScore",
    "podInitialBackoffSeconds", "podMaxBackoffSeconds", "profiles", "extenders", "delayCacheUntilActive",
}
LEADER_ELECTION_FIELDS = {
    "leaderElect", "leaseDuration", "renewDeadline", "retryPeriod", "resourceLock", "resourceName", "resourceNamespace",
}
PROFILE_FIELDS = {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"}


def check_repo_scheduler_config(c: "Checks") -> str:
    """webhook-config/kube-scheduler-config.yaml: only fields kube-scheduler knows, and the verbs,
    cache mode and URL path nodewright serves."""
    path = REPO / "webhook-config" / "kube-scheduler-config.yaml"
    cfg = yaml.safe_load(path.read_text())
    c.equal((cfg.get("apiVersion"), cfg.get("kind")), ("kubescheduler.config.k8s.io/v1", "KubeSchedulerConfiguration"),
            f"{path.name} apiVersion/kind")
    c.that(set(cfg) <= KUBE_SCHEDULER_CONFIG_FIELDS, f"unknown fields {set(cfg) - KUBE_SCHEDULER_CONFIG_FIELDS}")
    extenders = cfg.get("extenders") or []
    c.equal(len(extenders), 1, "one extender")
    e = extenders[0] if extenders else {}
    c.that(set(e) <= EXTENDER_FIELDS, f"unknown extender fields {set(e) - EXTENDER_FIELDS}")
    c.that(set(e.get("tlsConfig") or {}) <= EXTENDER_TLS_FIELDS, "unknown tlsConfig fields")
    c.that(str(e.get("urlPrefix", "")).rstrip("/").endswith("/scheduler"), "urlPrefix ends in /scheduler")
    c.equal((e.get("filterVerb"), e.get("prioritizeVerb")), ("filter", "prioritize"), "verbs")
    c.equal(e.get("nodeCacheCapable"), True, "nodeCacheCapable")
    c.that(isinstance(e.get("weight"), int) and e["weight"] > 0, "weight > 0 (prioritizeVerb is set)")
    return "fields and verbs as nodewright serves them"


class Failure(Exception):
    """One failed assertion."""


class Checks:
    """Collects assertions of one check; `ok` turns false at the first failure."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.count = 0

    def that(self, condition: Any, message: str) -> bool:
        self.count += 1
        if not condition:
            self.failures.append(message)
        return bool(condition)

    def equal(self, actual: Any, expected: Any, message: str) -> bool:
        return self.that(actual == expected, f"{message}: got {actual!r}, want {expected!r}")


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def line(self, ok: bool, name: str, detail: str = "", failures: list[str] | None = None) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        for f in failures or []:
            print(f"       - {f}", flush=True)
        if not ok:
            self.failed += 1

    def run(self, name: str, fn: Callable[[Checks], str | None]) -> bool:
        checks = Checks()
        try:
            detail = fn(checks) or ""
        except Failure as e:
            checks.failures.append(str(e))
            detail = ""
        except Exception as e:  # a crash in a check is a failure of that check
            checks.failures.append(f"{type(e).__name__}: {e}")
            detail = ""
        ok = not checks.failures
        self.line(ok, name, detail if ok else f"{len(checks.failures)} of {checks.count} assertions failed",
                  checks.failures)
        return ok


# --- helpers ------------------------------------------------------------------------------

def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def gvk(obj: dict) -> str:
    return f"{obj.get('apiVersion')}/{obj.get('kind')}"


def matches(selector: dict, labels: dict) -> bool:
    """matchLabels and matchExpressions of a LabelSelector against labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def parse_seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, rest = 0.0, duration
    for number, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
        rest = rest.replace(number + unit, "", 1)
    if rest:
        raise Failure(f"not a duration: {duration!r}")
    return total


def args_of(container: dict) -> dict[str, list[str]]:
    """--flag=value arguments by flag (repeatable flags keep every value)."""
    out: dict[str, list[str]] = {}
    for a in (container.get("command") or [])[1:] + (container.get("args") or []):
        if a.startswith("--"):
            flag, _, value = a.partition("=")
            out.setdefault(flag, []).append(value)
    return out


def one(args: dict[str, list[str]], flag: str) -> str | None:
    values = args.get(flag)
    if not values:
        return None
    if len(values) != 1:
        raise Failure(f"{flag} given {len(values)} times")
    return values[0]


def metric_names() -> tuple[set[str], set[str]]:
    """Every series name src/metrics.rs and src/metrics/*.rs export: (all names, histogram base names)."""
    src = (REPO / "src" / "metrics.rs").read_text()
    prefix = re.search(r'Registry::new_custom\(Some\("([a-z_]+)"', src).group(1)
    src += "".join(p.read_text() for p in sorted((REPO / "src" / "metrics").glob("*.rs")))
    names: set[str] = set()
    histograms: set[str] = set()
    for ctor, name in re.findall(
        r'(HistogramOpts::new|Opts::new|IntGauge::new|IntCounter::new|Gauge::new|Counter::new)\(\s*"([a-z0-9_]+)"', src
    ):
        full = f"{prefix}_{name}"
        if ctor == "HistogramOpts::new":
            histograms.add(full)
            names.update({f"{full}_bucket", f"{full}_sum", f"{full}_count"})
        else:
            names.add(full)
    return names, histograms


def referenced_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bnodewright_[a-z0-9_]+", expr))


# --- the chart ------------------------------------------------------------------------------

class ValueSet:
    def __init__(self, name: str, path: Path | None) -> None:
        self.name = name
        self.path = path
        self.values: dict = {}
        self.release, self.namespace = DEFAULT_RELEASE
        if path:
            text = path.read_text()
            self.values = yaml.safe_load(text) or {}
            m = re.search(r"^# release: (\S+) (\S+)$", text, re.M)
            if m:
                self.release, self.namespace = m.group(1), m.group(2)


def render(chart: "helm.Chart", values: dict, release: str, namespace: str, kube_version: str) -> dict[str, str]:
    # Chart.render() has no kube_version; the library's render options do (helm-python-sdk 0.2.2).
    # strict: a template reading a value that does not exist is an error (missingkey=error), not
    # an empty string.
    opts = {"name": release, "namespace": namespace, "is_install": True, "kube_version": kube_version,
            "strict": True}
    return json.loads(helm_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))


class Rendered:
    """One render of the chart, indexed."""

    def __init__(self, vs: ValueSet, merged: dict, manifests: dict[str, str], kube_version: str) -> None:
        self.vs = vs
        self.v = merged
        self.kube_version = kube_version
        self.ns = vs.namespace
        self.notes = ""
        self.objects: list[dict] = []
        self.sources: dict[int, str] = {}
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in load_yaml_docs(text):
                self.sources[id(doc)] = path
                self.objects.append(doc)

    def all(self, kind: str, component: str | None = None) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind and (
            component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]

    def get(self, kind: str, name: str) -> dict | None:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        if len(found) > 1:
            raise Failure(f"{kind} {name} rendered {len(found)} times")
        return found[0] if found else None

    def need(self, kind: str, name: str) -> dict:
        obj = self.get(kind, name)
        if obj is None:
            raise Failure(f"no {kind} {name} rendered")
        return obj

    def only(self, kind: str, component: str | None = None) -> dict:
        found = self.all(kind, component)
        if len(found) != 1:
            raise Failure(f"expected one {kind}{' (' + component + ')' if component else ''}, got {len(found)}")
        return found[0]


def pod_labels(deploy: dict) -> dict:
    return deploy["spec"]["template"]["metadata"].get("labels", {})


def container(deploy: dict, name: str) -> dict:
    for c in deploy["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise Failure(f"Deployment {deploy['metadata']['name']} has no container {name}")


def mounted_file(r: Rendered, deploy: dict, c: dict, path: str | None, what: str = "file") -> tuple[str, str, str]:
    """The (volume kind, object name, key) a file path in container c comes from."""
    if not path:
        raise Failure(f"{what} not given")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"].get("volumes", [])}
    for m in c.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(mount) or m.get("subPath"):
            continue
        key = path[len(mount):]
        vol = volumes.get(m["name"])
        if vol is None:
            raise Failure(f"volumeMount {m['name']} has no volume")
        if "configMap" in vol:
            src, kind, name = vol["configMap"], "ConfigMap", vol["configMap"]["name"]
        elif "secret" in vol:
            src, kind, name = vol["secret"], "Secret", vol["secret"]["secretName"]
        else:
            raise Failure(f"{path} is on volume {m['name']}, neither a ConfigMap nor a Secret")
        items = src.get("items")
        if items is not None:
            by_path = {i["path"]: i["key"] for i in items}
            if key not in by_path:
                raise Failure(f"{path}: volume {m['name']} projects only {sorted(by_path)}")
            key = by_path[key]
        if kind == "ConfigMap":
            cm = r.get("ConfigMap", name)
            if cm is None or key not in (cm.get("data") or {}):
                raise Failure(f"{path}: ConfigMap {name} has no key {key}")
        return kind, name, key
    raise Failure(f"{path} is on no volumeMount of container {c['name']}")


# --- semantic checks ----------------------------------------------------------------------

def expected_rbac(r: Rendered) -> tuple[set, set]:
    """nodewright's permissions, as (group, resource, verb, name): the Kubernetes API calls of src/cluster/
    (watches, quota ledger, leader Lease, NodeClaims, events, self-managed certificates) and src/provision/."""
    v = r.v
    mode = v["certificates"]["mode"]
    full = fullname(r)
    cluster = set()

    def add(target: set, group: str, resource: str, verbs: list[str], names: list[str] | None = None) -> None:
        for verb in verbs:
            for name in names or [None]:
                target.add((group, resource, verb, name))

    add(cluster, "", "pods", ["list", "watch"])
    add(cluster, "", "nodes", ["list", "watch", "patch", "get", "delete"])
    add(cluster, "", "pods", ["delete"])
    add(cluster, "", "pods/eviction", ["create"])
    add(cluster, "", "namespaces", ["list", "watch"])
    add(cluster, "apps", "daemonsets", ["list", "watch"])
    add(cluster, "", "persistentvolumeclaims", ["list", "watch"])
    add(cluster, "", "persistentvolumes", ["list", "watch"])
    add(cluster, "storage.k8s.io", "storageclasses", ["list", "watch"])
    add(cluster, "storage.k8s.io", "volumeattachments", ["list"])
    add(cluster, "policy", "poddisruptionbudgets", ["list"])
    add(cluster, "nodewright.io", "nodeclaims", ["list", "get", "create", "patch", "delete"])
    add(cluster, "nodewright.io", "nodeclaims/status", ["patch"])
    add(cluster, "events.k8s.io", "events", ["create", "patch"])
    if manages_ca_bundle(v):
        # src/cluster/certs.rs reads and watches both kinds of the name, and patches those that exist.
        webhook = webhook_name(r)
        for kind in ("mutating", "validating"):
            resource = f"{kind}webhookconfigurations"
            add(cluster, "admissionregistration.k8s.io", resource, ["get", "list", "watch"], [webhook])
            if v["webhooks"][kind]["enabled"]:
                add(cluster, "admissionregistration.k8s.io", resource, ["patch"], [webhook])
    namespaced = set()
    add(namespaced, "", "configmaps", ["get", "create", "update"])
    add(namespaced, "coordination.k8s.io", "leases", ["create"])
    add(namespaced, "coordination.k8s.io", "leases", ["get", "update"], [provisioner_lease()])
    if mode == "self-managed":
        names = [f"{full}-tls", f"{full}-tls-ca"]
        if v["extender"]["clientAuth"]["enabled"]:
            names.append(f"{full}-extender-client")
        add(namespaced, "", "secrets", ["create"])
        add(namespaced, "", "secrets", ["get", "update"], names)
    return cluster, namespaced


def permissions(role: dict) -> set:
    out = set()
    for rule in role.get("rules", []):
        for g in rule.get("apiGroups", []):
            for res in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    for name in rule.get("resourceNames") or [None]:
                        out.add((g, res, verb, name))
    return out


def provisioner_lease() -> str:
    src = (REPO / "src" / "cluster" / "leader.rs").read_text()
    m = re.search(r'name:\s*"([a-z0-9-]+)"\.to_owned\(\)', src)
    if not m:
        raise Failure("cannot find the provisioner Lease name in src/cluster/leader.rs")
    return m.group(1)


def fullname(r: Rendered) -> str:
    return r.only("Deployment", "controller")["metadata"]["name"]


def webhook_name(r: Rendered) -> str:
    return r.v["webhooks"]["name"] or fullname(r)


def manages_ca_bundle(v: dict) -> bool:
    if not (v["webhooks"]["mutating"]["enabled"] or v["webhooks"]["validating"]["enabled"]):
        return False
    mode = v["certificates"]["mode"]
    return mode == "self-managed" or (mode == "provided" and not v["certificates"]["provided"]["caBundle"])


def check_common(r: Rendered, c: Checks) -> None:
    """Every object: namespaced ones carry the release namespace, all carry the chart's labels."""
    for o in r.objects:
        md = o["metadata"]
        what = f"{o['kind']} {md.get('name')}"
        c.that(md.get("name"), f"{o['kind']} without a name")
        limit = 63 if o["kind"] in ("Service", "Namespace") else 253
        c.that(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", md.get("name", "")) and len(md["name"]) <= limit,
               f"{what}: not a valid name of at most {limit} characters")
        for key, value in (md.get("labels") or {}).items():
            c.that(isinstance(value, str) and len(value) <= 63, f"{what}: label {key} is not a string of at most 63")
        if o["kind"] not in CLUSTER_SCOPED:
            expected = {r.ns, "kube-system", r.v["metrics"]["dashboard"]["namespace"] or r.ns,
                        r.v["metrics"]["serviceMonitor"]["namespace"] or r.ns,
                        r.v["metrics"]["prometheusRule"]["namespace"] or r.ns}
            c.that(md.get("namespace") in expected, f"{what}: namespace {md.get('namespace')!r}")
        else:
            c.that("namespace" not in md, f"{what}: cluster-scoped object with a namespace")
        labels = md.get("labels", {})
        c.equal(labels.get("app.kubernetes.io/instance"), r.vs.release, f"{what}: instance label")
        c.equal(labels.get("app.kubernetes.io/managed-by"), "Helm", f"{what}: managed-by label")
    seen = set()
    for o in r.objects:
        key = (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        c.that(key not in seen, f"{key} rendered twice")
        seen.add(key)


def check_deployment(r: Rendered, c: Checks) -> dict:
    v = r.v
    d = r.only("Deployment", "controller")
    spec = d["spec"]
    pod = spec["template"]["spec"]
    labels = pod_labels(d)
    nw = container(d, "nodewright")
    a = args_of(nw)
    c.equal(spec["replicas"], v["replicas"], "replicas")
    c.that(matches(spec["selector"], labels), "Deployment selector does not select its pods")
    c.equal(labels.get("nodewright.io/skip"), "true", "pod label nodewright.io/skip")
    c.equal(pod.get("priorityClassName"), v["priorityClassName"] or None, "priorityClassName")
    c.equal((nw.get("args") or [None])[0], "serve", "first argument")
    c.equal(one(a, "--namespace"), r.ns, "--namespace")
    c.equal(one(a, "--log-format"), v["logFormat"], "--log-format")
    sa = r.only("ServiceAccount", "controller")
    c.equal(pod.get("serviceAccountName"), sa["metadata"]["name"], "serviceAccountName")
    c.that(pod.get("automountServiceAccountToken", True), "the ServiceAccount token must be mounted")
    # The hardened security context, pod and container.
    psc, csc = pod.get("securityContext", {}), nw.get("securityContext", {})
    c.equal(psc.get("runAsNonRoot") or csc.get("runAsNonRoot"), True, "runAsNonRoot")
    c.equal(csc.get("runAsUser", psc.get("runAsUser")), 65532, "runAsUser")
    c.equal(csc.get("runAsGroup", psc.get("runAsGroup")), 65532, "runAsGroup")
    c.equal(csc.get("readOnlyRootFilesystem"), True, "readOnlyRootFilesystem")
    c.equal(csc.get("allowPrivilegeEscalation"), False, "allowPrivilegeEscalation")
    c.that("ALL" in csc.get("capabilities", {}).get("drop", []), "capabilities must drop ALL")
    c.that(not csc.get("capabilities", {}).get("add"), "no capability may be added")
    c.equal((csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type"), "RuntimeDefault", "seccompProfile")
    c.that(not csc.get("privileged"), "privileged")
    # Downward API.
    env = {e["name"]: e for e in nw.get("env", [])}
    for name, field in [("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")]:
        c.equal(env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"), field, f"env {name}")
    # Ports and probes on the plain-HTTP metrics port.
    ports = {p["name"]: p["containerPort"] for p in nw["ports"]}
    listen = one(a, "--listen") or ""
    metrics_listen = one(a, "--metrics-listen") or ""
    c.that(listen.endswith(f":{ports.get('https')}"), f"--listen {listen} is not the https port {ports.get('https')}")
    c.that(metrics_listen.endswith(f":{ports.get('metrics')}"), f"--metrics-listen {metrics_listen} is not the metrics port")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")]:
        get = nw.get(probe, {}).get("httpGet", {})
        c.equal(get.get("path"), path, f"{probe} path")
        c.that(get.get("port") in ("metrics", ports.get("metrics")), f"{probe} is not on the metrics port")
        c.that(get.get("scheme", "HTTP") == "HTTP", f"{probe} must be plain HTTP")
    # Drain fits in the grace period.
    shutdown = parse_seconds(one(a, "--shutdown-timeout") or "30s")
    c.that(pod["terminationGracePeriodSeconds"] > shutdown,
           f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= --shutdown-timeout {shutdown}")
    # Spread: one per node, then zones.
    tsc = pod.get("topologySpreadConstraints", [])
    if not v["topologySpreadConstraints"]:
        keys = {(t["topologyKey"], t["whenUnsatisfiable"]) for t in tsc}
        c.that(("kubernetes.io/hostname", "DoNotSchedule") in keys, "no hostname DoNotSchedule spread")
        c.that(("topology.kubernetes.io/zone", "ScheduleAnyway") in keys, "no zone ScheduleAnyway spread")
        for t in tsc:
            c.that(matches(t["labelSelector"], labels), f"spread on {t['topologyKey']} does not select the pods")
    # The config file and the certificate files come from mounted objects.
    config_path = one(a, "--config")
    kind, name, key = mounted_file(r, d, nw, config_path, "--config")
    c.equal((kind, name), ("ConfigMap", f"{fullname(r)}-config"), "--config source")
    c.that(not any(m.get("subPath") for m in nw.get("volumeMounts", [])), "subPath mounts are never updated")
    return d


def check_certificates(r: Rendered, c: Checks, d: dict) -> None:
    v = r.v
    mode = v["certificates"]["mode"]
    full = fullname(r)
    nw = container(d, "nodewright")
    a = args_of(nw)
    svc = r.only("Service", "controller")
    mtls = v["extender"]["clientAuth"]["enabled"]
    c.that(not ("--tls-secret" in a and "--tls-cert" in a), "--tls-secret conflicts with --tls-cert")
    c.that(("--tls-cert" in a) == ("--tls-key" in a), "--tls-cert and --tls-key go together")
    manages = manages_ca_bundle(v)
    if manages:
        c.equal(a.get("--webhook-configuration"), [webhook_name(r)], "--webhook-configuration")
    else:
        c.that("--webhook-configuration" not in a, "--webhook-configuration without a caBundle to keep")
    if mode == "self-managed":
        c.equal(one(a, "--tls-secret"), f"{full}-tls", "--tls-secret")
        c.equal(one(a, "--service"), svc["metadata"]["name"], "--service")
        sm = v["certificates"]["selfManaged"]
        c.equal((one(a, "--cert-validity"), one(a, "--ca-validity")), (sm["certValidity"], sm["caValidity"]), "validities")
        c.that(parse_seconds(sm["caValidity"]) > parse_seconds(sm["certValidity"]), "the CA must outlive the certificates")
        c.that("--tls-cert" not in a and "--ca-bundle-file" not in a, "self-managed mode takes no certificate files")
        c.equal(one(a, "--extender-client-secret"), f"{full}-extender-client" if mtls else None, "--extender-client-secret")
        c.that("--extender-client-ca" not in a, "--extender-client-ca in self-managed mode")
        c.that(not r.all("Certificate") and not r.all("Issuer"), "cert-manager objects in self-managed mode")
        return
    c.that(not {"--tls-secret", "--extender-client-secret", "--service", "--cert-validity", "--ca-validity"} & set(a),
           f"self-managed flags in {mode} mode")
    for flag, key in [("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")]:
        kind, name, k = mounted_file(r, d, nw, one(a, flag), flag)
        secret = v["certificates"]["provided"]["secretName"] if mode == "provided" else f"{full}-tls"
        c.equal((kind, name, k), ("Secret", secret, key), f"{flag} source")
    if mode == "provided":
        c.that(not r.all("Certificate") and not r.all("Issuer"), "cert-manager objects in provided mode")
        if manages:
            c.equal(mounted_file(r, d, nw, one(a, "--ca-bundle-file"), "--ca-bundle-file"),
                    ("Secret", v["certificates"]["provided"]["secretName"], "ca.crt"), "--ca-bundle-file source")
        else:
            c.that("--ca-bundle-file" not in a, "--ca-bundle-file with an explicit caBundle")
        if mtls:
            p = v["extender"]["clientAuth"]["provided"]
            c.equal(mounted_file(r, d, nw, one(a, "--extender-client-ca"), "--extender-client-ca"),
                    ("Secret", p["caSecretName"], p["caKey"]), "--extender-client-ca source")
        else:
            c.that("--extender-client-ca" not in a, "--extender-client-ca without clientAuth")
        return
    # cert-manager
    cert = r.need("Certificate", f"{full}-tls")
    c.equal(cert["spec"]["secretName"], f"{full}-tls", "serving Certificate secretName")
    name = svc["metadata"]["name"]
    for dns in [name, f"{name}.{r.ns}", f"{name}.{r.ns}.svc", f"{name}.{r.ns}.svc.cluster.local"]:
        c.that(dns in cert["spec"].get("dnsNames", []), f"serving Certificate lacks dnsName {dns}")
    c.that("server auth" in cert["spec"].get("usages", []), "serving Certificate without server auth")
    if mtls:
        c.equal(mounted_file(r, d, nw, one(a, "--extender-client-ca"), "--extender-client-ca"), ("Secret", f"{full}-tls", "ca.crt"),
                "--extender-client-ca source")
        client = r.need("Certificate", f"{full}-extender-client")
        c.that("client auth" in client["spec"].get("usages", []), "client Certificate without client auth")
        c.that("server auth" not in client["spec"].get("usages", []), "client Certificate with server auth")
        c.equal(client["spec"]["issuerRef"], cert["spec"]["issuerRef"], "client Certificate issuer")
    else:
        c.that("--extender-client-ca" not in a, "--extender-client-ca without clientAuth")
        c.that(r.get("Certificate", f"{full}-extender-client") is None, "client Certificate without clientAuth")
    ref = cert["spec"]["issuerRef"]
    if v["certificates"]["certManager"]["issuerRef"]:
        c.equal(ref["name"], v["certificates"]["certManager"]["issuerRef"]["name"], "issuerRef")
        c.that(not r.all("Issuer"), "the chart made Issuers although issuerRef is given")
    else:
        ca_issuer = r.need("Issuer", ref["name"])
        c.equal(ref.get("kind"), "Issuer", "issuerRef kind")
        ca_cert = [x for x in r.all("Certificate") if x["spec"].get("isCA")]
        c.that(len(ca_cert) == 1, "one CA Certificate")
        if ca_cert:
            c.equal(ca_issuer["spec"].get("ca", {}).get("secretName"), ca_cert[0]["spec"]["secretName"],
                    "CA Issuer's Secret is the CA Certificate's")
            bootstrap = r.need("Issuer", ca_cert[0]["spec"]["issuerRef"]["name"])
            c.that("selfSigned" in bootstrap["spec"], "the CA is signed by a self-signed Issuer")


def check_service(r: Rendered, c: Checks, d: dict) -> dict:
    svc = r.only("Service", "controller")
    labels = pod_labels(d)
    c.that(matches({"matchLabels": svc["spec"]["selector"]}, labels), "Service does not select nodewright's pods")
    for sched in r.all("Deployment", "scheduler"):
        c.that(not matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(sched)),
               "Service selects the scheduler's pods")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    c.equal(ports.get("https", {}).get("port"), r.v["service"]["port"], "Service https port")
    c.equal(ports.get("https", {}).get("targetPort"), "https", "Service https targetPort")
    c.equal(ports.get("metrics", {}).get("targetPort"), "metrics", "Service metrics targetPort")
    cports = {p["name"] for p in container(d, "nodewright")["ports"]}
    c.that({"https", "metrics"} <= cports, "container ports https and metrics")
    for pdb in r.all("PodDisruptionBudget", "controller"):
        c.that(matches(pdb["spec"]["selector"], labels), "PodDisruptionBudget does not select nodewright's pods")
        c.that(("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]), "PDB: minAvailable or maxUnavailable")
    c.equal(len(r.all("PodDisruptionBudget", "controller")),
            1 if r.v["podDisruptionBudget"]["enabled"] and r.v["replicas"] > 1 else 0, "PodDisruptionBudgets")
    sa = r.only("ServiceAccount", "controller")
    c.equal(sa["metadata"].get("annotations", {}), r.v["serviceAccount"]["annotations"] or {}, "ServiceAccount annotations")
    return svc


def check_webhooks(r: Rendered, c: Checks, svc: dict) -> None:
    v = r.v
    mode = v["certificates"]["mode"]
    name = webhook_name(r)
    svc_ports = {p["port"]: p for p in svc["spec"]["ports"]}
    for kind, key, path in [("MutatingWebhookConfiguration", "mutating", "/mutate"),
                            ("ValidatingWebhookConfiguration", "validating", "/validate")]:
        conf = r.get(kind, name)
        wv = v["webhooks"][key]
        if not c.equal(conf is not None, wv["enabled"], f"{kind} rendered"):
            continue
        if conf is None:
            continue
        c.equal(len(r.all(kind)), 1, f"one {kind}")
        annotations = conf["metadata"].get("annotations", {})
        if mode == "cert-manager":
            c.equal(annotations.get("cert-manager.io/inject-ca-from"), f"{r.ns}/{fullname(r)}-tls", f"{kind} inject-ca-from")
            c.that(r.get("Certificate", f"{fullname(r)}-tls") is not None, "inject-ca-from names no rendered Certificate")
        else:
            c.that("cert-manager.io/inject-ca-from" not in annotations, f"{kind}: inject-ca-from in {mode} mode")
        for hook in conf["webhooks"]:
            cc = hook["clientConfig"]
            c.that("url" not in cc, f"{kind}: url instead of service")
            s = cc.get("service", {})
            c.equal((s.get("name"), s.get("namespace")), (svc["metadata"]["name"], r.ns), f"{kind} service")
            c.equal(s.get("path"), path, f"{kind} path")
            port = svc_ports.get(s.get("port", 443))
            c.that(port and port["targetPort"] == "https", f"{kind}: service port {s.get('port')} is not the https port")
            if mode == "provided" and v["certificates"]["provided"]["caBundle"]:
                c.equal(cc.get("caBundle"), v["certificates"]["provided"]["caBundle"], f"{kind} caBundle")
            else:
                # Offline, lookup finds nothing: nodewright or cainjector fills it in.
                c.that("caBundle" not in cc, f"{kind}: caBundle rendered in {mode} mode")
            c.equal(hook["failurePolicy"], wv["failurePolicy"], f"{kind} failurePolicy")
            c.equal(hook["timeoutSeconds"], wv["timeoutSeconds"], f"{kind} timeoutSeconds")
            c.that(hook["sideEffects"] in ("None", "NoneOnDryRun"), f"{kind} sideEffects")
            c.equal(hook["admissionReviewVersions"], ["v1"], f"{kind} admissionReviewVersions")
            c.that(hook["rules"] and all(rule["resources"] == ["pods"] and rule["operations"] == ["CREATE"]
                                         for rule in hook["rules"]), f"{kind} rules: pod CREATE only")
            sel = hook.get("namespaceSelector", {})
            excluded = set()
            for e in sel.get("matchExpressions", []):
                if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn":
                    excluded |= set(e["values"])
            for ns in SYSTEM_NAMESPACES + [r.ns] + v["webhooks"]["excludedNamespaces"]:
                c.that(ns in excluded, f"{kind}: namespaceSelector does not exclude {ns}")
                c.that(not matches(sel, {"kubernetes.io/metadata.name": ns}), f"{kind} is called for namespace {ns}")
            own_pod = pod_labels(r.only("Deployment", "controller"))
            c.that(matches(sel, {"kubernetes.io/metadata.name": "team-a"}) or v["webhooks"][key]["namespaceSelector"]
                   or (key == "validating" and v["webhooks"]["validating"]["narrowToQuotaNamespaces"]),
                   f"{kind} is called for no ordinary namespace")
            if key == "mutating":
                c.equal(hook.get("reinvocationPolicy"), wv["reinvocationPolicy"], "reinvocationPolicy")
                c.that(not matches(hook.get("objectSelector", {}), own_pod), "mutating objectSelector admits nodewright's pods")
                c.that(not matches(hook.get("objectSelector", {}), {"nodewright.io/skip": "true"}),
                       "mutating objectSelector does not honour nodewright.io/skip")
                c.that(not matches(sel, {"kubernetes.io/metadata.name": "x", "nodewright.io/skip": "true"}),
                       "a namespace labelled nodewright.io/skip=true is steered")
            else:
                # Nobody escapes a quota by labelling a pod.
                c.that(matches(hook.get("objectSelector", {}), {"nodewright.io/skip": "true"}),
                       "quota webhook skips pods labelled nodewright.io/skip")
                if wv["narrowToQuotaNamespaces"]:
                    names = set(wv["quotaNamespaces"])
                    for q in v["config"]["policy"]["quotas"]:
                        names |= set(q.get("namespaces", []))
                    for ns in names:
                        c.that(matches(sel, {"kubernetes.io/metadata.name": ns}), f"narrowed quota webhook skips {ns}")
                    c.that(not matches(sel, {"kubernetes.io/metadata.name": "not-quotad"}),
                           "narrowed quota webhook is called for other namespaces")
            for cond in hook.get("matchConditions", []):
                c.that(cond.get("name") and cond.get("expression"), f"{kind} matchCondition")
            c.equal(hook.get("matchConditions", []), wv["matchConditions"], f"{kind} matchConditions")


def check_rbac(r: Rendered, c: Checks) -> None:
    v = r.v
    if not v["rbac"]["create"]:
        c.that(not r.all("ClusterRole") and not r.all("Role"), "RBAC objects with rbac.create false")
        return
    for o in r.all("ClusterRole") + r.all("Role"):
        for rule in o.get("rules", []):
            for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                c.that("*" not in (rule.get(field) or []), f"{o['kind']} {o['metadata']['name']}: wildcard in {field}")
            c.that(not rule.get("nonResourceURLs"), f"{o['kind']} {o['metadata']['name']}: nonResourceURLs")
            if rule.get("resourceNames"):
                c.that(not {"create", "deletecollection"} & set(rule["verbs"]),
                       f"{o['kind']} {o['metadata']['name']}: resourceNames cannot restrict create")
    full = fullname(r)
    sa = r.only("ServiceAccount", "controller")["metadata"]["name"]
    want_cluster, want_ns = expected_rbac(r)
    got_cluster = permissions(r.need("ClusterRole", full))
    got_ns = permissions(r.need("Role", full))
    c.that(got_cluster == want_cluster, f"ClusterRole: extra {sorted(got_cluster - want_cluster, key=str)}, "
                                        f"missing {sorted(want_cluster - got_cluster, key=str)}")
    c.that(got_ns == want_ns, f"Role: extra {sorted(got_ns - want_ns, key=str)}, missing {sorted(want_ns - got_ns, key=str)}")
    c.equal(r.need("Role", full)["metadata"]["namespace"], r.ns, "Role namespace")
    for kind, role_kind in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")]:
        b = r.need(kind, full)
        c.equal(b["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": full}, f"{kind} roleRef")
        c.equal(b["subjects"], [{"kind": "ServiceAccount", "name": sa, "namespace": r.ns}], f"{kind} subjects")
    # The second scheduler's RBAC, as the "Configure Multiple Schedulers" guide.
    sched = r.all("Deployment", "scheduler")
    bindings = [b for b in r.all("ClusterRoleBinding") + r.all("RoleBinding")
                if b["metadata"]["labels"].get("app.kubernetes.io/component") == "scheduler"]
    if not sched:
        c.that(not bindings, "scheduler bindings without the scheduler")
        return
    ssa = sched[0]["spec"]["template"]["spec"]["serviceAccountName"]
    c.that(r.get("ServiceAccount", ssa), f"scheduler ServiceAccount {ssa} not rendered")
    refs = {(b["kind"], b["metadata"].get("namespace"), b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings}
    for b in bindings:
        c.equal(b["subjects"], [{"kind": "ServiceAccount", "name": ssa, "namespace": r.ns}], f"{b['metadata']['name']} subjects")
    for want in [("ClusterRoleBinding", None, "ClusterRole", "system:kube-scheduler"),
                 ("ClusterRoleBinding", None, "ClusterRole", "system:volume-scheduler"),
                 ("RoleBinding", "kube-system", "Role", "extension-apiserver-authentication-reader")]:
        c.that(want in refs, f"scheduler binding {want} missing")
    own = [x for x in refs if x[0] == "RoleBinding" and x[1] == r.ns]
    c.equal(len(own), 1, "scheduler RoleBinding for its Lease")
    if own:
        role = r.need("Role", own[0][3])
        cfg = scheduler_config(r)
        lease = cfg["leaderElection"]["resourceName"]
        c.equal(cfg["leaderElection"]["resourceNamespace"], r.ns, "scheduler Lease namespace")
        c.equal(permissions(role), {("coordination.k8s.io", "leases", "create", None),
                                    ("coordination.k8s.io", "leases", "get", lease),
                                    ("coordination.k8s.io", "leases", "update", lease)}, "scheduler Lease Role")


def scheduler_config(r: Rendered) -> dict:
    d = r.only("Deployment", "scheduler")
    ks = container(d, "kube-scheduler")
    kind, name, key = mounted_file(r, d, ks, one(args_of(ks), "--config"), "kube-scheduler --config")
    if kind != "ConfigMap":
        raise Failure("kube-scheduler --config is not from a ConfigMap")
    return yaml.safe_load(r.need("ConfigMap", name)["data"][key])


def check_scheduler(r: Rendered, c: Checks, svc: dict) -> str:
    v = r.v
    s = v["scheduler"]
    deployments = r.all("Deployment", "scheduler")
    if not s["enabled"]:
        c.that(not deployments, "scheduler rendered while disabled")
        return "no scheduler"
    d = r.only("Deployment", "scheduler")
    pod = d["spec"]["template"]["spec"]
    ks = container(d, "kube-scheduler")
    c.equal(d["spec"]["replicas"], s["replicas"], "scheduler replicas")
    c.that(matches(d["spec"]["selector"], pod_labels(d)), "scheduler selector does not select its pods")
    c.that(not matches(d["spec"]["selector"], pod_labels(r.only("Deployment", "controller"))),
           "scheduler selector selects nodewright's pods")
    c.equal(pod_labels(d).get("nodewright.io/skip"), "true", "scheduler pod label nodewright.io/skip")
    version = re.match(r"v?(\d+\.\d+\.\d+)", r.kube_version).group(1)
    c.equal(ks["image"], f"{s['image']['registry']}/{s['image']['repository']}:{s['image']['tag'] or 'v' + version}",
            "kube-scheduler image")
    csc, psc = ks.get("securityContext", {}), pod.get("securityContext", {})
    c.equal(csc.get("readOnlyRootFilesystem"), True, "scheduler readOnlyRootFilesystem")
    c.equal(csc.get("allowPrivilegeEscalation"), False, "scheduler allowPrivilegeEscalation")
    c.that("ALL" in csc.get("capabilities", {}).get("drop", []), "scheduler capabilities drop ALL")
    c.equal(csc.get("runAsUser", psc.get("runAsUser")), 65532, "scheduler runAsUser")
    c.equal(csc.get("runAsNonRoot") or psc.get("runAsNonRoot"), True, "scheduler runAsNonRoot")
    c.equal((csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type"), "RuntimeDefault",
            "scheduler seccompProfile")
    for probe in ("livenessProbe", "readinessProbe"):
        get = ks.get(probe, {}).get("httpGet", {})
        c.equal((get.get("port"), get.get("scheme")), (10259, "HTTPS"), f"scheduler {probe}")
    c.equal(ks["livenessProbe"]["httpGet"]["path"], "/healthz", "scheduler liveness path")
    cfg = scheduler_config(r)
    # KubeSchedulerConfiguration: only fields kube-scheduler knows (it decodes strictly).
    c.equal((cfg.get("apiVersion"), cfg.get("kind")), ("kubescheduler.config.k8s.io/v1", "KubeSchedulerConfiguration"),
            "scheduler config type")
    c.that(set(cfg) <= KUBE_SCHEDULER_CONFIG_FIELDS, f"unknown KubeSchedulerConfiguration fields {set(cfg) - KUBE_SCHEDULER_CONFIG_FIELDS}")
    le = cfg.get("leaderElection", {})
    c.that(set(le) <= LEADER_ELECTION_FIELDS, f"unknown leaderElection fields {set(le) - LEADER_ELECTION_FIELDS}")
    c.equal((le.get("leaderElect"), le.get("resourceLock")), (True, "leases"), "scheduler leader election")
    c.equal(le.get("resourceName"), s["leaderElection"]["leaseName"] or s["name"], "scheduler Lease name")
    c.that(parse_seconds(le["leaseDuration"]) > parse_seconds(le["renewDeadline"]) > parse_seconds(le["retryPeriod"]),
           "leaseDuration > renewDeadline > retryPeriod")
    profiles = cfg.get("profiles", [])
    c.equal([p.get("schedulerName") for p in profiles], [s["name"]], "scheduler profiles")
    for p in profiles:
        c.that(set(p) <= PROFILE_FIELDS, f"unknown profile fields {set(p) - PROFILE_FIELDS}")
    ext = cfg.get("extenders", [])
    c.equal(len(ext), 1, "one extender")
    e = ext[0] if ext else {}
    c.that(set(e) <= EXTENDER_FIELDS, f"unknown extender fields {set(e) - EXTENDER_FIELDS}")
    c.that(set(e.get("tlsConfig", {})) <= EXTENDER_TLS_FIELDS, "unknown tlsConfig fields")
    name = svc["metadata"]["name"]
    c.equal(e.get("urlPrefix"), f"https://{name}.{r.ns}.svc:{v['service']['port']}/scheduler", "extender urlPrefix")
    c.equal((e.get("filterVerb"), e.get("prioritizeVerb")), ("filter", "prioritize"), "extender verbs")
    c.that(not e.get("bindVerb") and not e.get("preemptVerb"), "nodewright serves no bind or preempt verb")
    c.that(isinstance(e.get("weight"), int) and e["weight"] > 0, "extender weight must be > 0 with prioritizeVerb")
    c.equal(e.get("weight"), v["extender"]["weight"], "extender weight")
    c.equal((e.get("nodeCacheCapable"), e.get("enableHTTPS"), e.get("ignorable")),
            (v["extender"]["nodeCacheCapable"], True, v["extender"]["ignorable"]), "extender flags")
    c.equal(e.get("httpTimeout"), v["extender"]["httpTimeout"], "extender httpTimeout")
    tls = e.get("tlsConfig", {})
    c.that(not tls.get("insecure"), "extender TLS must verify nodewright's certificate")
    serving = v["certificates"]["provided"]["secretName"] if v["certificates"]["mode"] == "provided" else f"{fullname(r)}-tls"
    c.equal(mounted_file(r, d, ks, tls.get("caFile"), "extender tlsConfig.caFile"), ("Secret", serving, "ca.crt"), "extender caFile source")
    nw_args = args_of(container(r.only("Deployment", "controller"), "nodewright"))
    if v["extender"]["clientAuth"]["enabled"]:
        cert_src = mounted_file(r, d, ks, tls.get("certFile"), "extender tlsConfig.certFile")
        key_src = mounted_file(r, d, ks, tls.get("keyFile"), "extender tlsConfig.keyFile")
        c.equal((cert_src[2], key_src[2]), ("tls.crt", "tls.key"), "extender client pair keys")
        c.equal(cert_src[1], key_src[1], "client certificate and key from one Secret")
        if v["certificates"]["mode"] == "self-managed":
            c.equal(one(nw_args, "--extender-client-secret"), cert_src[1], "client Secret nodewright issues")
        elif v["certificates"]["mode"] == "cert-manager":
            c.equal(r.need("Certificate", cert_src[1])["spec"]["secretName"], cert_src[1], "client Certificate's Secret")
        else:
            c.equal(cert_src[1], v["extender"]["clientAuth"]["provided"]["clientSecretName"], "provided client Secret")
        c.that("--extender-client-ca" in nw_args or "--extender-client-secret" in nw_args,
               "nodewright does not require client certificates")
        volumes = {x["name"]: x for x in pod["volumes"]}
        c.that(all("tls.key" not in [i["key"] for i in (volumes[m["name"]].get("secret", {}).get("items") or [])]
                   for m in ks["volumeMounts"] if volumes[m["name"]].get("secret", {}).get("secretName") == serving),
               "the scheduler mounts nodewright's serving key")
    else:
        c.that("certFile" not in tls and "keyFile" not in tls, "client certificate without clientAuth")
    # Pods roll when the config changes: kube-scheduler reads it only at start.
    cm_text = r.need("ConfigMap", d["metadata"]["name"])["data"]["config.yaml"]
    checksum = d["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/config")
    c.equal(checksum, hashlib.sha256(cm_text.rstrip("\n").encode()).hexdigest(), "checksum/config")
    return f"scheduler {s['name']}"


def check_config(r: Rendered, c: Checks, tmp: Path, binary: Path | None) -> str:
    """The nodewright config in its ConfigMap: the right documents; `nodewright plan` reads it."""
    v = r.v
    cm = r.need("ConfigMap", f"{fullname(r)}-config")
    text = cm["data"]["config.yaml"]
    c.that("{{" not in text, "config still holds a template ({{ ... }})")
    docs = load_yaml_docs(text)
    kinds = [gvk(d) for d in docs]
    for k in kinds:
        c.that(k in {"karpenter.sh/v1/NodePool", "karpenter.k8s.aws/v1/EC2NodeClass", "nodewright.io/v1alpha1/Policy"},
               f"unexpected config document {k}")
    policies = [d for d in docs if d["kind"] == "Policy"]
    c.equal(len(policies), 1, "Policy documents")
    pools = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NodePool"}
    classes = {d["metadata"]["name"] for d in docs if d["kind"] == "EC2NodeClass"}
    if not v["config"]["file"]:
        c.equal(set(pools), set(v["config"]["nodePools"]), "NodePools")
        c.equal(classes, set(v["config"]["ec2NodeClasses"]), "EC2NodeClasses")
    for name, pool in pools.items():
        ref = pool["spec"]["template"]["spec"]["nodeClassRef"]["name"]
        c.that(ref in classes, f"NodePool {name} refers to EC2NodeClass {ref}, not in the config")
    spec = policies[0]["spec"] if policies else {}
    for rule in spec.get("rules", []):
        c.that(rule["nodePool"] in pools, f"rule {rule.get('name')} steers to NodePool {rule['nodePool']}, not in the config")
    if not v["config"]["file"]:
        want_scheduler = v["config"]["policy"]["schedulerName"] or (v["scheduler"]["name"] if v["scheduler"]["enabled"] else None)
        c.equal(spec.get("schedulerName"), want_scheduler, "Policy schedulerName")
        want_cluster = v["config"]["policy"]["provisioning"].get("clusterName") or v["clusterName"] or None
        c.equal(spec.get("provisioning", {}).get("clusterName"), want_cluster, "Policy provisioning.clusterName")
        c.that(all(val not in ("", {}, [], None) for val in spec.values()), "empty entries in the Policy spec")
    if v["scheduler"]["enabled"] and spec.get("schedulerName"):
        c.that(spec["schedulerName"] == v["scheduler"]["name"] or v["config"]["policy"]["schedulerName"],
               "steered pods are not given the second scheduler's name")
    detail = f"config {len(pools)} NodePool(s), {len(classes)} EC2NodeClass(es), 1 Policy"
    if binary:
        config_file = tmp / f"{r.vs.name}-config.yaml"
        config_file.write_text(text)
        rules = spec.get("rules", [])
        pod_ns = next((ns for rule in rules for ns in rule.get("namespaces", [])), "default")
        manifest = tmp / f"{r.vs.name}-pod.yaml"
        manifest.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chart-check", "namespace": pod_ns},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}))
        p = subprocess.run([str(binary), "plan", "--config", str(config_file), "--output", "json", str(manifest)],
                           capture_output=True, text=True, timeout=60)
        last = (p.stderr.strip().splitlines() or [""])[-1]
        if c.that(p.returncode == 0, f"nodewright plan refused the config (exit {p.returncode}): {last[-1500:]}"):
            out = json.loads(p.stdout)
            c.that("nodes" in out and "unschedulable" in out, "nodewright plan --output json: no nodes/unschedulable")
            detail += f", nodewright plan: {len(out.get('nodes', []))} node(s) for the test pod in {pod_ns}"
        # Every flag the chart passes, the binary knows (clap would refuse to start otherwise).
        help_text = serve_help(binary)
        nw = container(r.only("Deployment", "controller"), "nodewright")
        for flag in args_of(nw):
            c.that(re.search(rf"^\s+{re.escape(flag)}[ =<]", help_text, re.M),
                   f"`nodewright serve` has no flag {flag} (the chart passes it)")
    return detail


_HELP: dict[Path, str] = {}


def serve_help(binary: Path) -> str:
    if binary not in _HELP:
        p = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise Failure(f"nodewright serve --help: exit {p.returncode}: {p.stderr.strip()[-500:]}")
        _HELP[binary] = p.stdout
    return _HELP[binary]


# Structural schemas of the kinds no Kubernetes schema covers (the fields this chart uses,
# named as the CRDs name them), checked with jsonschema. check-manifests.sh's schemaless_kinds
# must list exactly these.
def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "additionalProperties": False, "required": required or []}


_META = {"type": "object", "required": ["name", "namespace"]}
_ISSUER_REF = _obj({"name": {"type": "string", "minLength": 1}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                    "group": {"type": "string"}}, ["name"])
_USAGES = {"type": "array", "items": {"enum": [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement", "data encipherment",
    "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth", "client auth", "code signing",
    "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc"]}}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
STRUCTURAL = {
    "cert-manager.io/v1/Certificate": _obj({
        "apiVersion": {}, "kind": {}, "metadata": _META,
        "spec": _obj({
            "secretName": {"type": "string", "minLength": 1}, "issuerRef": _ISSUER_REF, "isCA": {"type": "boolean"},
            "commonName": {"type": "string", "maxLength": 64}, "dnsNames": {"type": "array", "items": {"type": "string"}},
            "duration": _DURATION, "renewBefore": _DURATION, "usages": _USAGES,
            "privateKey": _obj({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                                "encoding": {"enum": ["PKCS1", "PKCS8"]}, "rotationPolicy": {"enum": ["Never", "Always"]}}),
        }, ["secretName", "issuerRef"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "cert-manager.io/v1/Issuer": _obj({
        "apiVersion": {}, "kind": {}, "metadata": _META,
        "spec": {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False, "properties": {
            "selfSigned": _obj({}), "ca": _obj({"secretName": {"type": "string", "minLength": 1}}, ["secretName"])}},
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "monitoring.coreos.com/v1/ServiceMonitor": _obj({
        "apiVersion": {}, "kind": {}, "metadata": _META,
        "spec": _obj({
            "jobLabel": {"type": "string"},
            "namespaceSelector": _obj({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}),
            "selector": {"type": "object", "required": ["matchLabels"]},
            "endpoints": {"type": "array", "minItems": 1, "items": _obj({
                "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}, ["port"])},
        }, ["selector", "endpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "monitoring.coreos.com/v1/PrometheusRule": _obj({
        "apiVersion": {}, "kind": {}, "metadata": _META,
        "spec": _obj({"groups": {"type": "array", "minItems": 1, "items": _obj({
            "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
            "rules": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["expr"],
                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                "properties": {"alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                               "record": {"type": "string"}, "expr": {"type": "string", "minLength": 1},
                               "for": {"type": "string"}, "keep_firing_for": {"type": "string"},
                               "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                               "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}},
        }, ["name", "rules"])}}, ["groups"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


def check_schemaless(r: Rendered, c: Checks, svc: dict, tmp: Path, promtool: str | None) -> str:
    import jsonschema

    names, _ = metric_names()
    seen = []
    for o in r.objects:
        k = gvk(o)
        if k not in STRUCTURAL:
            continue
        seen.append(o["kind"])
        for err in jsonschema.Draft7Validator(STRUCTURAL[k]).iter_errors(o):
            c.that(False, f"{o['kind']} {o['metadata']['name']}: {'/'.join(map(str, err.path))}: {err.message}")
    for sm in r.all("ServiceMonitor"):
        spec = sm["spec"]
        c.that(matches(spec["selector"], svc["metadata"]["labels"]), "ServiceMonitor does not select the Service")
        c.that(r.ns in spec.get("namespaceSelector", {}).get("matchNames", []), "ServiceMonitor namespaceSelector")
        svc_ports = {p["name"] for p in svc["spec"]["ports"]}
        for ep in spec["endpoints"]:
            c.equal(ep["port"], "metrics", "ServiceMonitor endpoint port")
            c.that(ep["port"] in svc_ports, f"ServiceMonitor port {ep['port']} is no Service port")
            c.that(parse_seconds(ep["scrapeTimeout"]) <= parse_seconds(ep["interval"]), "scrapeTimeout > interval")
    c.equal(len(r.all("ServiceMonitor")), 1 if r.v["metrics"]["serviceMonitor"]["enabled"] else 0, "ServiceMonitors")
    rules = r.all("PrometheusRule")
    c.equal(len(rules), 1 if r.v["metrics"]["prometheusRule"]["enabled"] else 0, "PrometheusRules")
    detail = f"{len(seen)} objects without a Kubernetes schema checked"
    for pr in rules:
        alerts = [rule for g in pr["spec"]["groups"] for rule in g["rules"]]
        extra = {x.get("alert") for x in r.v["metrics"]["prometheusRule"]["additionalRules"]}
        for rule in alerts:
            for m in referenced_metrics(rule["expr"]):
                c.that(m in names, f"alert {rule.get('alert')} queries {m}, which src/metrics.rs and src/metrics/ do not define")
            if "alert" in rule:
                c.that(rule.get("labels", {}).get("severity") in ("critical", "warning", "info"),
                       f"alert {rule['alert']} without a severity")
                for key, value in r.v["metrics"]["prometheusRule"]["alertLabels"].items():
                    if rule["alert"] not in extra:
                        c.equal(rule["labels"].get(key), value, f"alert {rule['alert']} label {key}")
        for name in r.v["metrics"]["prometheusRule"]["disabled"]:
            c.that(name not in [a.get("alert") for a in alerts], f"disabled alert {name} rendered")
        if promtool is None:
            c.that(False, "promtool not found (scripts/setup-test-deps.sh installs the prometheus package)")
            continue
        rules_file = tmp / f"{r.vs.name}-rules.yaml"
        rules_file.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}))
        p = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
        if c.that(p.returncode == 0, f"promtool check rules: {(p.stdout + p.stderr).strip()[-1500:]}"):
            detail += f", promtool: {len(alerts)} rules"
    for cm in [x for x in r.all("ConfigMap") if x["metadata"]["name"].endswith("-dashboard")]:
        d = r.v["metrics"]["dashboard"]
        c.equal(cm["data"]["nodewright.json"], (CHART / "dashboards" / "nodewright.json").read_text().rstrip("\n"),
                "dashboard ConfigMap content")
        for key, value in d["labels"].items():
            c.equal(cm["metadata"]["labels"].get(key), value, f"dashboard label {key}")
        c.equal(cm["metadata"]["namespace"], d["namespace"] or r.ns, "dashboard namespace")
    for np in r.all("NetworkPolicy"):
        labels = pod_labels(r.only("Deployment", "controller"))
        c.that(matches(np["spec"]["podSelector"], labels), "NetworkPolicy does not select nodewright's pods")
        ports = [p["port"] for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])]
        c.that({"https", "metrics"} <= set(ports), "NetworkPolicy ingress ports")
        if r.v["scheduler"]["enabled"] and r.v["networkPolicy"]["webhook"]["from"]:
            sched = pod_labels(r.only("Deployment", "scheduler"))
            https = [rule for rule in np["spec"]["ingress"] if any(p["port"] == "https" for p in rule["ports"])]
            c.that(any("podSelector" in peer and matches(peer["podSelector"], sched) and "namespaceSelector" not in peer
                       for rule in https for peer in rule.get("from", [])),
                   "NetworkPolicy keeps the second scheduler from the extender")
        c.equal("Egress" in np["spec"]["policyTypes"], r.v["networkPolicy"]["egress"]["enabled"], "Egress policy type")
    return detail


def check_notes(r: Rendered, c: Checks) -> None:
    n = r.notes
    c.that(n.strip(), "NOTES.txt rendered nothing")
    c.that(f"-n {r.ns}" in n, "NOTES.txt does not name the namespace")
    c.that("port-forward" in n and "/metrics" in n, "NOTES.txt does not say how to reach the metrics")
    if r.v["scheduler"]["enabled"]:
        c.that(r.v["scheduler"]["name"] in n, "NOTES.txt does not name the second scheduler")
    else:
        c.that("urlPrefix:" in n, "NOTES.txt does not show the extender stanza")
        stanza = n[n.index("extenders:"):].split("\n\n")[0]
        parsed = yaml.safe_load(stanza)
        c.that(set(parsed["extenders"][0]) <= EXTENDER_FIELDS, "NOTES.txt extender stanza has unknown fields")
    c.that("dry-run=server" in n, "NOTES.txt has no test pod")


def check_set(report: Report, chart: "helm.Chart", vs: ValueSet, kube_version: str, out: Path, tmp: Path,
              binary: Path | None, promtool: str | None, manifest_list: list[str]) -> None:
    label = f"{vs.name} @{kube_version.lstrip('v')}"

    def lint(c: Checks) -> str:
        res = helm.lint(str(CHART), vs.values, strict=True, namespace=vs.namespace, kube_version=kube_version)
        for m in res["messages"]:
            c.that(m["severity"] < 2, f"helm lint: {m['path']}: {m['error']}")
        for e in res["errors"]:
            c.that(False, f"helm lint: {e}")
        info = [m["error"] for m in res["messages"] if m["severity"] < 2]
        return "helm lint --strict" + (f" (info: {'; '.join(sorted(set(info)))})" if info else "")

    report.run(f"{label} lint", lint)
    state: dict[str, Rendered] = {}

    def do_render(c: Checks) -> str:
        chart.validate_schema(vs.values)
        merged = chart.merge_values(vs.values)
        manifests = render(chart, vs.values, vs.release, vs.namespace, kube_version)
        r = Rendered(vs, merged, manifests, kube_version)
        state["r"] = r
        crds = [yaml.safe_load(x["data"]) for x in chart.crds]
        path = out / f"{vs.name}@{kube_version.lstrip('v')}.yaml"
        path.write_text(yaml.safe_dump_all(r.objects + crds, sort_keys=False))
        manifest_list.append(f"{path} {kube_version.lstrip('v')}")
        check_common(r, c)
        return f"{len(r.objects)} objects + {len(crds)} CRD as {vs.release} in {vs.namespace} -> {path.name}"

    if not report.run(f"{label} render", do_render):
        return
    r = state["r"]

    def semantics(c: Checks) -> str:
        d = check_deployment(r, c)
        svc = check_service(r, c, d)
        check_certificates(r, c, d)
        check_webhooks(r, c, svc)
        check_rbac(r, c)
        sched = check_scheduler(r, c, svc)
        check_notes(r, c)
        return f"{c.count} assertions (mode {r.v['certificates']['mode']}, {sched})"

    report.run(f"{label} semantics", semantics)
    report.run(f"{label} config", lambda c: check_config(r, c, tmp, binary))
    report.run(f"{label} schemaless", lambda c: check_schemaless(r, c, r.only("Service", "controller"), tmp, promtool))


# --- checks done once -----------------------------------------------------------------------

def check_crd(c: Checks) -> str:
    ours = CHART / "crds" / "nodeclaims.nodewright.io.yaml"
    upstream = REPO / "webhook-config" / "crds" / "nodeclaims.nodewright.io.yaml"
    c.that(ours.read_bytes() == upstream.read_bytes(),
           f"{ours.relative_to(REPO)} differs from {upstream.relative_to(REPO)}: copy it again")
    c.equal(sorted(p.name for p in (CHART / "crds").iterdir()), sorted(p.name for p in upstream.parent.iterdir()),
            "CRD files")
    return "crds/ identical to webhook-config/crds/"


def check_invalid(chart: "helm.Chart", c: Checks) -> str:
    files = sorted((CHART / "ci" / "invalid").glob("*.yaml"))
    c.that(files, "no ci/invalid/*.yaml")
    for f in files:
        text = f.read_text()
        m = re.search(r"^# expect: (.+)$", text, re.M)
        if not c.that(m, f"{f.name}: no '# expect: <message>' line"):
            continue
        values = yaml.safe_load(text) or {}
        try:
            chart.validate_schema(values)
            render(chart, values, *DEFAULT_RELEASE, "v1.29.0")
        except helm.HelmError as e:
            c.that(m.group(1) in str(e), f"{f.name}: refused, but not for {m.group(1)!r}: {str(e).strip()[:400]}")
        else:
            c.that(False, f"{f.name}: accepted")
    return f"{len(files)} bad value sets refused, each for its expected reason"


def check_kube_version(chart: "helm.Chart", c: Checks) -> str:
    try:
        render(chart, {}, *DEFAULT_RELEASE, "v1.28.9")
    except helm.HelmError as e:
        c.that("kube" in str(e).lower(), f"refused v1.28.9 for another reason: {e}")
    else:
        c.that(False, "the chart renders for Kubernetes v1.28.9, older than kubeVersion >=1.29.0-0")
    manifests = render(chart, {"scheduler": {"enabled": True}}, *DEFAULT_RELEASE, "v1.30.4-eks-a737599")
    images = re.findall(r"image: (\S+kube-scheduler\S*)", "\n".join(manifests.values()))
    c.equal(images, ["registry.k8s.io/kube-scheduler:v1.30.4"], "kube-scheduler image for an EKS version")
    return "v1.28 refused; v1.30.4-eks-a737599 -> kube-scheduler:v1.30.4"


def check_dashboard(c: Checks) -> str:
    names, histograms = metric_names()
    path = CHART / "dashboards" / "nodewright.json"
    dash = json.loads(path.read_text())
    c.that(dash.get("uid") and dash.get("title"), "dashboard without uid or title")
    exprs = []

    def walk(panels: list) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    c.that(len(exprs) >= 20, f"only {len(exprs)} queries")
    used = set()
    for e in exprs:
        for m in referenced_metrics(e):
            used.add(m)
            c.that(m in names, f"dashboard queries {m}, which src/metrics.rs and src/metrics/ do not define")
        for h in histograms:
            c.that(not re.search(rf"\b{h}\b(?!_)", e), f"dashboard uses histogram {h} without _bucket/_sum/_count")
    ids = [p["id"] for p in dash["panels"]]
    c.equal(len(ids), len(set(ids)), "unique panel ids")
    for p in dash["panels"]:
        if p["type"] != "row":
            c.that(p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']}: datasource not templated")
    for t in dash["templating"]["list"]:
        for m in referenced_metrics(json.dumps(t.get("query", ""))):
            c.that(m in names, f"variable {t['name']} queries unknown {m}")
    unused = sorted({n for n in names if not n.endswith(("_sum", "_count"))} - used
                    - {f"{h}_bucket" for h in histograms if f"{h}_count" in used or f"{h}_bucket" in used})
    return f"{len(exprs)} queries over {len(used)} metrics, all in src/metrics.rs and src/metrics/" + (
        f" (not charted: {', '.join(unused)})" if unused else "")


def check_capacity_codes(chart: "helm.Chart", c: Checks) -> str:
    src = (REPO / "src" / "cloud" / "launch" / "retry.rs").read_text()
    block = re.search(r"pub const ICE_CODES: &\[&str\] = &\[(.*?)\];", src, re.S)
    if not c.that(block, "ICE_CODES not found in src/cloud/launch/retry.rs"):
        return ""
    codes = set(re.findall(r'"([A-Za-z]+)"', block.group(1))) | {"InsufficientCapacity"}
    ours = set(chart.values["metrics"]["prometheusRule"]["ec2CapacityErrorCodes"])
    c.equal(ours, codes, "metrics.prometheusRule.ec2CapacityErrorCodes vs ICE_CODES + InsufficientCapacity")
    return f"{len(codes)} capacity codes match src/cloud/launch/retry.rs"


def check_readme(c: Checks) -> str:
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "chart-readme.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    c.that(p.returncode == 0, (p.stdout + p.stderr).strip())
    return p.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for the rendered manifests")
    ap.add_argument("--kube-versions", nargs="+", default=["1.29.0", "1.37.0"])
    ap.add_argument("--schemaless", nargs="*", default=None,
                    help="check-manifests.sh's schemaless_kinds; must be the kinds checked structurally here")
    ap.add_argument("--nodewright", type=Path, default=REPO / "target" / "debug" / "nodewright",
                    help="binary for `nodewright plan` (skipped when missing)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report()
    chart = helm.Chart.load(str(CHART))
    binary = args.nodewright if args.nodewright.is_file() and os.access(args.nodewright, os.X_OK) else None
    promtool = shutil.which("promtool")
    if binary is None and os.environ.get("NODEWRIGHT_REQUIRE_BIN") == "1":
        print(f"FAIL {args.nodewright} is not built, and NODEWRIGHT_REQUIRE_BIN=1 (scripts/test.sh) needs its checks")
        return 1
    if binary:
        newest = max(p.stat().st_mtime for p in (REPO / "src").rglob("*.rs"))
        if binary.stat().st_mtime < newest:
            print(f"warning: {binary} is older than src/ (run cargo build); its checks may fail for that reason")
    print(f"--- helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), chart {chart.name} {chart.version}; "
          f"nodewright plan: {binary or 'skipped, ' + str(args.nodewright) + ' not built'}; promtool: {promtool or 'missing'}")
    schemaless = set(STRUCTURAL) if args.schemaless is None else set(args.schemaless)
    report.run("chart schemaless kinds", lambda c: c.equal(schemaless, set(STRUCTURAL),
                                                           "schemaless_kinds vs the structural checks") and
               f"{len(STRUCTURAL)} kinds checked structurally: {', '.join(sorted(STRUCTURAL))}")
    report.run("chart crds", check_crd)
    report.run("chart invalid values", lambda c: check_invalid(chart, c))
    report.run("chart kubeVersion", lambda c: check_kube_version(chart, c))
    report.run("chart dashboard", check_dashboard)
    report.run("chart alert capacity codes", lambda c: check_capacity_codes(chart, c))
    report.run("chart README values table", check_readme)
    report.run("webhook-config kube-scheduler-config.yaml", check_repo_scheduler_config)
    sets = [ValueSet("default", None)] + [ValueSet(p.name.removesuffix("-values.yaml").removesuffix(".yaml"), p)
                                          for p in sorted((CHART / "ci").glob("*.yaml"))]
    manifest_list: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for vs in sets:
            for kv in args.kube_versions:
                check_set(report, chart, vs, "v" + kv.lstrip("v"), args.out, Path(tmp), binary, promtool, manifest_list)
    (args.out / "manifests.txt").write_text("".join(line + "\n" for line in manifest_list))
    total = len(sets) * len(args.kube_versions)
    if report.failed:
        print(f"chart-check: {report.failed} check(s) failed ({len(sets)} value sets x {len(args.kube_versions)} versions)")
        return 1
    print(f"chart-check: all checks passed ({len(sets)} value sets x {len(args.kube_versions)} versions = {total} renders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
