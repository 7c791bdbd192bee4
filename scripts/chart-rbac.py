#!/usr/bin/env python3
"""Prints, as one JSON list, the controller RBAC objects (ClusterRole, Role) that the Helm chart
charts/nodewright grants nodewright, rendered with Helm's library (helm-python-sdk) in the mode
that needs the most (self-managed certificates, extender mTLS, the second scheduler:
ci/scheduler-mtls-values.yaml). The cluster tests (tests/common/controlplane.rs) create them in the
real kube-apiserver and run nodewright under a ServiceAccount bound to them, so a request the chart
does not grant fails the test.

    scripts/chart-rbac.py RELEASE NAMESPACE
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

try:
    import helm_python as helm
    from helm_python import _native as helm_native
except ImportError:
    sys.exit("chart-rbac: helm-python-sdk is missing; run scripts/setup-test-deps.sh")

CHART = Path(__file__).resolve().parent.parent / "charts" / "nodewright"


def main() -> int:
    release, namespace = (sys.argv[1:3] + ["nodewright", "nodewright"][len(sys.argv[1:3]):])[:2]
    values = yaml.safe_load((CHART / "ci" / "scheduler-mtls-values.yaml").read_text()) or {}
    chart = helm.Chart.load(str(CHART))
    opts = {"name": release, "namespace": namespace, "is_install": True, "kube_version": "v1.37.2",
            "strict": True}
    manifests = json.loads(helm_native.call_string("helm_render", chart._raw(), json.dumps(values),
                                                   json.dumps(opts)))
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc or doc.get("kind") not in ("ClusterRole", "Role"):
                continue
            if doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "controller":
                continue
            out.append(doc)
    if not out:
        sys.exit("chart-rbac: the chart rendered no controller ClusterRole or Role")
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
