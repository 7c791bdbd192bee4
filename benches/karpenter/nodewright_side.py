#!/usr/bin/env python3
"""nodewright's half of benches/karpenter/run.sh (python3, standard library only).

Karpenter's benchmark input, as nodewright_export_test.go writes it, turned into what
`nodewright plan` reads, plus the checks and the table:

  prepare EXPORT WORK     catalog for the EC2 stand-in, config (NodePool, EC2NodeClass, Policy
                          with prices), probe pods; prints how Karpenter's fake types map
  ec2 WORK PORTFILE       serves DescribeInstanceTypes, DescribeInstanceTypeOfferings and
                          DescribeSpotPriceHistory for those types on 127.0.0.1 (EC2 query API),
                          so `nodewright plan --catalog ec2` loads them as it loads EC2's
  probe WORK PLAN         checks the probe plan: every type's allocatable equals Karpenter's
  inputs EXPORT N         the pod file nodewright reads against what Karpenter's Solve got
  check EXPORT WORK N     both plans: pods placed, fit, price per node, constraint checks
  table WORK SIZES...     the side-by-side table

Why an EC2 stand-in: `nodewright plan` takes its catalog from the embedded AWS data or from
EC2 (--catalog embedded|ec2); there is no catalog-file input. The EC2 path prices a type only
if the embedded on-demand table knows its name, so each fake type is served under a real
us-east-1 type name (assigned round-robin over instance families, so no 16 consecutive sizes
share a family: nodewright's packing looks at at most 3 sizes per family, and Karpenter's fake
types have no family), and the Policy's pricing overrides set Karpenter's price for it.
"""

import collections
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

MIB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PRICES = os.path.join(REPO, "src", "cloud", "data", "ec2-on-demand-prices.csv")
VM_MEMORY_OVERHEAD = 0.075  # src/model/catalog.rs: capacity.memory = MiB x (1 - 7.5 %)
KUBE_RESERVED_CPU_M = 100  # Karpenter's fake types: KubeReserved cpu 100m, memory 10Mi
KUBE_RESERVED_MEM = 10 * MIB
ZONE = "topology.kubernetes.io/zone"
HOSTNAME = "kubernetes.io/hostname"


def load(path):
    with open(path) as f:
        return json.load(f)


def dump(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


# ---------------------------------------------------------------- prepare


def real_names(count):
    """`count` priced us-east-1 type names, round-robin over families."""
    families = collections.OrderedDict()
    with open(PRICES) as f:
        for line in f:
            if line.startswith("#") or line.startswith("region,"):
                continue
            region, name, _ = line.strip().split(",")
            if region != "us-east-1" or name.startswith("mac"):
                continue
            families.setdefault(name.split(".")[0], []).append(name)
    for names in families.values():
        names.sort()
    out, depth = [], 0
    while len(out) < count:
        row = [names[depth] for names in families.values() if len(names) > depth]
        if not row:
            sys.exit(f"only {len(out)} priced types, need {count}")
        out.extend(row)
        depth += 1
    return out[:count]


def memory_mib_for(capacity_bytes):
    """The MiB to describe so nodewright's capacity (MiB x (1 - 7.5 %), truncated) is exact."""
    target = capacity_bytes // MIB
    if target * MIB != capacity_bytes:
        return None
    m = int(target / (1.0 - VM_MEMORY_OVERHEAD))
    while int(m * (1.0 - VM_MEMORY_OVERHEAD)) < target:
        m += 1
    return m if int(m * (1.0 - VM_MEMORY_OVERHEAD)) == target else None


def prepare(export, work):
    types = load(os.path.join(export, "instancetypes.json"))
    names = real_names(len(types))
    stub, overrides, differences = [], [], collections.Counter()
    zones_all = set()
    for t, name in zip(types, names):
        cap, over = t["capacity"], t["overhead"]
        if cap["cpu"] % 1000:
            sys.exit(f"{t['name']}: fractional vCPUs {cap['cpu']}m")
        if over.get("cpu") != KUBE_RESERVED_CPU_M or over.get("memory") != KUBE_RESERVED_MEM:
            sys.exit(f"{t['name']}: overhead {over} is not 100m/10Mi")
        mib = memory_mib_for(cap["memory"])
        if mib is None:
            sys.exit(f"{t['name']}: memory {cap['memory']} not expressible")
        pods = cap["pods"]
        offerings = [o for o in t["offerings"] if o["available"]]
        prices = {o["price"] for o in offerings}
        if len(prices) != 1:
            sys.exit(f"{t['name']}: several prices {prices}; the config gives one per type")
        zones = sorted({o["zone"] for o in offerings})
        zones_all.update(zones)
        spot = sorted(o["zone"] for o in offerings if o["capacityType"] == "spot")
        if spot and spot != zones:
            differences["spot offered in " + ",".join(sorted(set(zones) - set(spot)))] += 1
        stub.append({
            "name": name, "fake": t["name"], "vcpus": cap["cpu"] // 1000, "memoryMiB": mib,
            # ENI max pods = ENIs x (IPv4 per ENI - 1) + 2 (src/cloud/catalog/facts.rs)
            "enis": 1, "ipv4PerEni": pods - 1, "spot": bool(spot), "zones": zones,
            "price": prices.pop(), "allocatable": t["allocatable"],
        })
        overrides.append({"instanceTypes": [name], "pricePerHour": stub[-1]["price"]})
    dump(os.path.join(work, "catalog.json"), stub)

    # No 16 consecutive sizes in one family (nodewright's candidate rule, PER_FAMILY = 3).
    fam = [s["name"].split(".")[0] for s in stub]
    worst = max(max(collections.Counter(fam[i:i + 16]).values()) for i in range(len(fam) - 15))

    config = f"""# Generated by benches/karpenter/nodewright_side.py from Karpenter's fake instance types.
apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: general
spec:
  template:
    spec:
      nodeClassRef:
        group: karpenter.k8s.aws
        kind: EC2NodeClass
        name: default
      requirements:
        - key: karpenter.sh/capacity-type
          operator: In
          values: [spot, on-demand]
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata:
  name: default
spec:
  amiSelectorTerms:
    - alias: al2023@latest
  role: KarpenterNodeRole-bench
  subnetSelectorTerms:
    - tags:
        karpenter.sh/discovery: bench
  securityGroupSelectorTerms:
    - tags:
        karpenter.sh/discovery: bench
  kubelet:
    # Karpenter's fake types: overhead = kubeReserved cpu 100m, memory 10Mi, nothing else.
    kubeReserved:
      cpu: 100m
      memory: 10Mi
    evictionHard:
      memory.available: "0"
---
apiVersion: nodewright.io/v1alpha1
kind: Policy
metadata:
  name: karpenter-bench
spec:
  pricing:
    overrides:
"""
    for o in overrides:
        config += f"      - instanceTypes: [{o['instanceTypes'][0]}]\n        pricePerHour: {o['pricePerHour']!r}\n"
    with open(os.path.join(work, "config.yaml"), "w") as f:
        f.write(config)

    # Probe pods: alone on a node each (hostname anti-affinity); a pod asking for exactly type
    # i's allocatable must get type i, one asking 1m cpu or 1 byte of memory more, type i+1.
    items = []
    for i, s in enumerate(stub):
        a = s["allocatable"]
        asks = [("fit", a["cpu"], a["memory"], i)]
        if i + 1 < len(stub):
            asks += [("cpu", a["cpu"] + 1, a["memory"], i + 1), ("mem", a["cpu"], a["memory"] + 1, i + 1)]
        for kind, cpu, mem, want in asks:
            items.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"probe-{kind}-{i}-want-{want}", "namespace": "default",
                             "labels": {"probe": "x"}},
                "spec": {
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": HOSTNAME, "labelSelector": {"matchLabels": {"probe": "x"}}}]}},
                    "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9",
                                    "resources": {"requests": {"cpu": f"{cpu}m", "memory": str(mem)}}}],
                },
            })
    dump(os.path.join(work, "probe.json"), {"apiVersion": "v1", "kind": "List", "items": items})

    first, last = stub[0], stub[-1]
    print(f"catalog: {len(stub)} of Karpenter's fake types (fake.InstanceTypes(400)) served by the EC2 stand-in")
    print(f"  {first['fake']} -> {first['name']}: {first['vcpus']} vCPU, {first['allocatable']['memory'] // MIB + 10} MiB "
          f"(described as {first['memoryMiB']} MiB, less nodewright's 7.5 % VM overhead), {first['ipv4PerEni'] + 1} pods, "
          f"{first['price']:.10f} $/h; ... {last['fake']} -> {last['name']}: {last['vcpus']} vCPU, {last['price']:.4f} $/h")
    print(f"  zones {','.join(sorted(zones_all))}; one price per type for every offering, as Karpenter's; "
          f"most sizes of one family in any 16 consecutive types: {worst}")
    for what, n in differences.items():
        print(f"  difference: nodewright's EC2 path offers spot in every zone a type is in; Karpenter's fake: not "
              f"{what.replace('spot offered in ', 'in ')} ({n} types; same price, so cost is unaffected)")


# ---------------------------------------------------------------- EC2 stand-in


def xml_items(tag, rows):
    return f"<{tag}>" + "".join(f"<item>{r}</item>" for r in rows) + f"</{tag}>"


def ec2_responses(catalog):
    types = []
    for s in catalog:
        usage = ["on-demand"] + (["spot"] if s["spot"] else [])
        types.append(
            f"<instanceType>{s['name']}</instanceType><currentGeneration>true</currentGeneration>"
            + xml_items("supportedUsageClasses", usage)
            + "<bareMetal>false</bareMetal><hypervisor>nitro</hypervisor>"
            + "<processorInfo>" + xml_items("supportedArchitectures", ["x86_64"]) + "</processorInfo>"
            + f"<vCpuInfo><defaultVCpus>{s['vcpus']}</defaultVCpus></vCpuInfo>"
            + f"<memoryInfo><sizeInMiB>{s['memoryMiB']}</sizeInMiB></memoryInfo>"
            + f"<networkInfo><maximumNetworkInterfaces>{s['enis']}</maximumNetworkInterfaces>"
            + f"<ipv4AddressesPerInterface>{s['ipv4PerEni']}</ipv4AddressesPerInterface></networkInfo>"
        )
    offerings = [
        f"<instanceType>{s['name']}</instanceType><locationType>availability-zone</locationType><location>{z}</location>"
        for s in catalog for z in s["zones"]
    ]
    ns = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'
    rid = "<requestId>00000000-0000-0000-0000-000000000000</requestId>"
    return {
        "DescribeInstanceTypes":
            f'<DescribeInstanceTypesResponse {ns}>{rid}{xml_items("instanceTypeSet", types)}</DescribeInstanceTypesResponse>',
        "DescribeInstanceTypeOfferings":
            f'<DescribeInstanceTypeOfferingsResponse {ns}>{rid}{xml_items("instanceTypeOfferingSet", offerings)}'
            "</DescribeInstanceTypeOfferingsResponse>",
        "DescribeSpotPriceHistory":
            f'<DescribeSpotPriceHistoryResponse {ns}>{rid}<spotPriceHistorySet/></DescribeSpotPriceHistoryResponse>',
    }


def serve(work, portfile):
    answers = {k: v.encode() for k, v in ec2_responses(load(os.path.join(work, "catalog.json"))).items()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            action = parse_qs(body).get("Action", [""])[0]
            data = answers.get(action)
            status = 200
            if data is None:
                status = 400
                data = (f"<Response><Errors><Error><Code>InvalidAction</Code><Message>{action} is not served"
                        "</Message></Error></Errors><RequestID>0</RequestID></Response>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(portfile + ".tmp", portfile)
    server.serve_forever()


# ---------------------------------------------------------------- checks


def probe(work, plan_path):
    catalog = load(os.path.join(work, "catalog.json"))
    index = {s["name"]: i for i, s in enumerate(catalog)}
    plan = load(plan_path)
    bad, checked = [], 0
    for node in plan["nodes"]:
        for pod in node["pods"]:
            want = int(pod.rsplit("-", 1)[1])
            got = index.get(node["instanceType"])
            checked += 1
            if got != want:
                bad.append(f"{pod}: got {node['instanceType']} (fake-it-{got})")
    unsched = plan.get("unschedulable", [])
    print(f"probe: {checked} pods each alone on a node asking exactly a type's allocatable, or 1m cpu / 1 byte "
          f"more: {checked - len(bad)} on the expected type, {len(bad)} not, {len(unsched)} unschedulable")
    for b in bad[:10]:
        print("  MISMATCH", b)
    if bad or unsched:
        sys.exit(1)


def pod_kind(spec):
    if spec.get("topologySpreadConstraints"):
        key = spec["topologySpreadConstraints"][0]["topologyKey"]
        return {ZONE: "zone-spread", HOSTNAME: "hostname-spread"}.get(key, "other-spread")
    aff = spec.get("affinity") or {}
    if "podAffinity" in aff:
        return "affinity/" + ("zone" if aff["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == ZONE else "other")
    if "podAntiAffinity" in aff:
        return "anti-affinity/" + ("hostname" if aff["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == HOSTNAME else "other")
    return "generic"


def quantity(text, millis=False):
    suffix = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9}
    text = str(text)
    if text.endswith("m"):
        value = float(text[:-1]) / 1000
    else:
        for s, f in suffix.items():
            if text.endswith(s):
                value = float(text[: -len(s)]) * f
                break
        else:
            value = float(text)
    return round(value * 1000) if millis else round(value)


def read_pods(export, n):
    pods = {}
    for p in load(os.path.join(export, f"pods-{n}.json"))["items"]:
        pods[f"{p['metadata']['namespace']}/{p['metadata']['name']}"] = {
            "kind": pod_kind(p["spec"]), "labels": p["metadata"].get("labels", {}), "spec": p["spec"],
            "cpu": sum(quantity(c["resources"]["requests"]["cpu"], True) for c in p["spec"]["containers"]),
            "mem": sum(quantity(c["resources"]["requests"]["memory"]) for c in p["spec"]["containers"]),
        }
    return pods


def inputs(export, n):
    pods = read_pods(export, n)
    k = load(os.path.join(export, f"karpenter-{n}.json"))["input"]
    mine = {"pods": len(pods), "byKind": dict(collections.Counter(p["kind"] for p in pods.values())),
            "cpuMillis": sum(p["cpu"] for p in pods.values()), "memoryBytes": sum(p["mem"] for p in pods.values())}
    same = mine["pods"] == k["pods"] and mine["byKind"] == k["byKind"] and mine["cpuMillis"] == k["cpuMillis"] \
        and mine["memoryBytes"] == k["memoryBytes"]
    kinds = ", ".join(f"{kk} {v}" for kk, v in sorted(mine["byKind"].items()))
    print(f"input {n}: {'SAME' if same else 'DIFFERENT'} in Karpenter's Solve and nodewright's file: {mine['pods']} pods "
          f"({kinds}); cpu {mine['cpuMillis'] / 1000:.2f} cores, memory {mine['memoryBytes'] / (1 << 30):.2f} GiB")
    if not same:
        print("  karpenter:", k)
        sys.exit(1)


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_plan(nodes, pods, alloc_of):
    """nodes: list of (fake type, zone, price, [pod keys]). Returns a dict of figures."""
    placed = [p for n in nodes for p in n[3]]
    over = 0
    for fake, _, _, members in nodes:
        a = alloc_of[fake]
        if sum(pods[p]["cpu"] for p in members) > a["cpu"] or sum(pods[p]["mem"] for p in members) > a["memory"] \
                or len(members) > a["pods"]:
            over += 1
    # Anti-affinity (app=nginx per node): nodes holding two matching pods.
    anti = sum(1 for n in nodes if sum(1 for p in n[3] if pods[p]["kind"].startswith("anti")) > 1)
    # Zone affinity: groups (my-affininity value) spread over more than one zone.
    zones_of = collections.defaultdict(set)
    for n in nodes:
        for p in n[3]:
            if pods[p]["kind"].startswith("affinity"):
                zones_of[pods[p]["labels"].get("my-affininity")].add(n[1])
    split = sum(1 for z in zones_of.values() if len(z) > 1)
    # Spread, final state (informational: pods that match a selector without carrying the
    # constraint may land anywhere after the constrained ones).
    zone_skew = 0
    selectors = {json.dumps(p["spec"]["topologySpreadConstraints"][0]["labelSelector"], sort_keys=True)
                 for p in pods.values() if p["kind"] == "zone-spread"}
    all_zones = sorted({n[1] for n in nodes})
    for sel in selectors:
        s = json.loads(sel)
        count = collections.Counter()
        for n in nodes:
            for p in n[3]:
                if matches(s, pods[p]["labels"]):
                    count[n[1]] += 1
        zone_skew = max(zone_skew, max(count[z] for z in all_zones) - min(count[z] for z in all_zones))
    # Hostname spread (maxSkew 1): spread pods sharing their node with another pod their selector
    # matches. Valid only if the spread pod binds first: Kubernetes checks spread for the incoming
    # pod alone, so in another binding order the spread pod would not fit there.
    host_shared, host_max = 0, 0
    for n in nodes:
        for p in n[3]:
            if pods[p]["kind"] == "hostname-spread":
                s = pods[p]["spec"]["topologySpreadConstraints"][0]["labelSelector"]
                others = sum(1 for q in n[3] if q != p and matches(s, pods[q]["labels"]))
                host_shared += others > 0
                host_max = max(host_max, others)
    # Nodes without an anti-affinity pod: the anti-affinity kind alone needs one node per pod.
    spare = [n for n in nodes if not any(pods[p]["kind"].startswith("anti") for p in n[3])]
    spare_kinds = collections.Counter(pods[p]["kind"] for n in spare for p in n[3])
    return {"placed": len(placed), "unique": len(set(placed)), "over": over, "anti": anti, "split": split,
            "zoneSkew": zone_skew, "hostShared": host_shared, "hostMax": host_max,
            "zones": collections.Counter(n[1] for n in nodes),
            "spare": len(spare), "spareZones": collections.Counter(n[1] for n in spare), "spareKinds": spare_kinds}


def check(export, work, n):
    pods = read_pods(export, n)
    types = load(os.path.join(export, "instancetypes.json"))
    alloc_of = {t["name"]: t["allocatable"] for t in types}
    price_of = {t["name"]: t["offerings"][0]["price"] for t in types}
    fake_of = {s["name"]: s["fake"] for s in load(os.path.join(work, "catalog.json"))}
    k = load(os.path.join(export, f"karpenter-{n}.json"))
    kn = [(x["instanceType"], x["zone"], x["price"], x["podNames"]) for x in k["nodeList"]]
    plan = load(os.path.join(work, f"plan-{n}.json"))
    wn = [(fake_of[x["instanceType"]], x["zone"], x["pricePerHour"], x["pods"]) for x in plan["nodes"]]
    price_bad = sum(1 for f, _, p, _ in wn if abs(p - price_of[f]) > 1e-9)
    summary = {"karpenter": {"nodes": len(kn), "price": k["pricePerHour"], "unschedulable": k["podErrors"]},
               "nodewright": {"nodes": len(wn), "price": plan["totalPricePerHour"],
                              "unschedulable": len(plan.get("unschedulable", []))}}
    for who, nodes in (("karpenter", kn), ("nodewright", wn)):
        c = check_plan(nodes, pods, alloc_of)
        summary[who].update(c)
        sizes = collections.Counter(int(f.rsplit("-", 1)[1]) + 1 for f, _, _, _ in nodes)
        vcpus = sum(s * c for s, c in sizes.items())
        print(f"{who:>10} {n}: {len(nodes)} nodes, {sum(x[2] for x in nodes):.4f} $/h, {vcpus} vCPU of nodes; "
              f"{c['placed']} pods placed ({c['unique']} distinct) of {len(pods)}; over Karpenter's allocatable: "
              f"{c['over']} nodes; 2+ anti-affinity pods: {c['anti']} nodes; zone-affinity groups over 2+ zones: "
              f"{c['split']}\n{'':>11}zone spread: largest final skew {c['zoneSkew']}; hostname spread: "
              f"{c['hostShared']} pods share a node with pods their selector matches (at most {c['hostMax']}); "
              f"nodes by zone {dict(sorted(c['zones'].items()))}\n{'':>11}nodes without an anti-affinity pod: "
              f"{c['spare']} {dict(sorted(c['spareZones'].items()))} holding {dict(sorted(c['spareKinds'].items()))}; "
              f"node vCPUs (size: count) {dict(sorted(sizes.items())[:6])}{' ...' if len(sizes) > 6 else ''}")
    if price_bad:
        print(f"  {price_bad} nodewright nodes priced differently from Karpenter's price of their type")
    dump(os.path.join(work, f"check-{n}.json"), summary)


def table(work, sizes):
    with open(os.path.join(work, "machine.txt")) as f:
        machine = f.read().strip()
    print(f"\nmachine: {machine}")
    head = ("pods", "k8r pods/s", "k8r 1-shot", "nw solve/s", "nw wall/s", "ratio solve", "ratio wall",
            "k8r nodes", "nw nodes", "nodes ratio", "k8r $/h", "nw $/h", "cost ratio")
    print(" ".join(f"{h:>11}" for h in head))
    for n in sizes:
        r = {**load(os.path.join(work, f"k-{n}.json")), **load(os.path.join(work, f"nw-{n}.json"))}
        c = load(os.path.join(work, f"check-{n}.json"))
        kps, nws, nww = r["karpenterPodsPerSec"], n / (r["nwSolveMs"] / 1000), n / r["nwWallS"]
        one = n / r["karpenterSolveSeconds"]
        kn, wn = c["karpenter"]["nodes"], c["nodewright"]["nodes"]
        kp, wp = c["karpenter"]["price"], c["nodewright"]["price"]
        row = (f"{n}", f"{kps:.0f}", f"{one:.0f}", f"{nws:.0f}", f"{nww:.0f}", f"{nws / kps:.1f}x", f"{nww / kps:.1f}x",
               f"{kn}", f"{wn}", f"{wn / kn:.3f}", f"{kp:.2f}", f"{wp:.2f}", f"{wp / kp:.3f}")
        print(" ".join(f"{x:>11}" for x in row))
    print("per size: Karpenter's benchmark line's own nodes metric; CPU seconds (user+sys) and wall of each whole "
          "process; load average (1 min) just before it (the machine is shared)")
    for n in sizes:
        r = {**load(os.path.join(work, f"k-{n}.json")), **load(os.path.join(work, f"nw-{n}.json"))}
        kc, kw, kl = r.get("karpenterProcessCpuS"), r.get("karpenterProcessWallS"), r.get("karpenterLoad")
        print(f"{n:>11}  k8r benchmark: nodes metric {r.get('karpenterBenchNodes', 0):.0f}, {r['karpenterIterations']} "
              f"Solve(s), process {kw or 0:.1f} s wall / {kc or 0:.1f} s cpu, load {kl or 0:.2f};  "
              f"nodewright plan: {r['nwWallS']:.2f} s wall / {r.get('nwCpuS', 0):.2f} s cpu, "
              f"{r['nwRssKiB'] // 1024} MiB peak RSS, load {r.get('nwLoad', 0):.2f}")
    print("k8r pods/s: Karpenter's BenchmarkSchedulingN (pods / (ns/op)), Solve alone; k8r 1-shot: the exporter's one "
          "timed Solve of the exact pods nodewright gets;\nnw solve/s: nodewright's solve phase (its log); nw wall/s: the "
          "whole `nodewright plan` process (read JSON, catalog over HTTP, solve, write JSON);\nratios: nodewright / "
          "Karpenter (pods/s: >1 is faster; nodes and cost: <1 is fewer / cheaper). Nodes and $/h: one Solve of the same "
          "pods each, Karpenter's launched as its fake cloud provider launches (cheapest compatible type).")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "prepare":
        prepare(*args)
    elif cmd == "ec2":
        serve(*args)
    elif cmd == "probe":
        probe(*args)
    elif cmd == "inputs":
        inputs(*args)
    elif cmd == "check":
        check(*args)
    elif cmd == "table":
        table(args[0], [int(a) for a in args[1:]])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
