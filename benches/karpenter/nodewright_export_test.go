//go:build test_performance

// Exporter for benches/karpenter/run.sh (nodewright). The script copies this file into
// sigs.k8s.io/karpenter/pkg/controllers/provisioning/scheduling of a pinned Karpenter release,
// next to scheduling_benchmark_test.go, and runs
//
//	NODEWRIGHT_EXPORT_DIR=DIR NODEWRIGHT_EXPORT_SIZES=1000,5000 \
//	  go test -tags test_performance -run '^TestNodewrightExport$' .
//
// For each size it builds the benchmark's own input with the benchmark's own code
// (makeDiversePods with its package-level generator reset to rand.NewSource(42), exactly as the
// first call of BenchmarkSchedulingN sees it; fake.InstanceTypes(400) through setupScheduler)
// and writes
//
//	DIR/pods-N.json          the pods, as a v1 List, exactly as passed to Scheduler.Solve
//	DIR/karpenter-N.json     one Solve of those pods by the benchmark's scheduler set-up: its
//	                         time, every new NodeClaim launched through the fake cloud provider's
//	                         Create (which takes the cheapest compatible type and offering, as
//	                         Karpenter's tests launch) with its type, zone, capacity type, price
//	                         and pods by constraint kind, and the input's counts and sums
//	DIR/instancetypes.json   the 400 fake instance types: capacity, overhead, allocatable,
//	                         offerings (zone, capacity type, price, availability)
//
// Nothing here changes how Karpenter schedules; it only calls the benchmark's helpers.
package scheduling_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	v1 "sigs.k8s.io/karpenter/pkg/apis/v1"
	"sigs.k8s.io/karpenter/pkg/cloudprovider"
	"sigs.k8s.io/karpenter/pkg/cloudprovider/fake"
	"sigs.k8s.io/karpenter/pkg/controllers/provisioning/scheduling"
	"sigs.k8s.io/karpenter/pkg/operator/injection"
	"sigs.k8s.io/karpenter/pkg/operator/options"
	"sigs.k8s.io/karpenter/pkg/test"
)

// podKind names the benchmark's five constraint kinds.
func podKind(p *corev1.Pod) string {
	if len(p.Spec.TopologySpreadConstraints) > 0 {
		switch p.Spec.TopologySpreadConstraints[0].TopologyKey {
		case corev1.LabelTopologyZone:
			return "zone-spread"
		case corev1.LabelHostname:
			return "hostname-spread"
		}
		return "other-spread"
	}
	if a := p.Spec.Affinity; a != nil {
		if a.PodAffinity != nil {
			return "affinity/" + shortKey(a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey)
		}
		if a.PodAntiAffinity != nil {
			return "anti-affinity/" + shortKey(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey)
		}
		return "other-affinity"
	}
	return "generic"
}

func shortKey(key string) string {
	switch key {
	case corev1.LabelTopologyZone:
		return "zone"
	case corev1.LabelHostname:
		return "hostname"
	}
	return key
}

type inputSummary struct {
	Pods        int            `json:"pods"`
	ByKind      map[string]int `json:"byKind"`
	CPUMillis   int64          `json:"cpuMillis"`
	MemoryBytes int64          `json:"memoryBytes"`
}

func summarize(pods []*corev1.Pod) inputSummary {
	s := inputSummary{ByKind: map[string]int{}}
	for _, p := range pods {
		s.Pods++
		s.ByKind[podKind(p)]++
		for _, c := range p.Spec.Containers {
			s.CPUMillis += c.Resources.Requests.Cpu().MilliValue()
			s.MemoryBytes += c.Resources.Requests.Memory().Value()
		}
	}
	return s
}

type exportedNode struct {
	InstanceType string         `json:"instanceType"`
	Zone         string         `json:"zone"`
	CapacityType string         `json:"capacityType"`
	Price        float64        `json:"price"`
	Options      int            `json:"instanceTypeOptions"`
	Pods         int            `json:"pods"`
	ByKind       map[string]int `json:"byKind"`
	CPUMillis    int64          `json:"cpuMillis"`
	MemoryBytes  int64          `json:"memoryBytes"`
	PodNames     []string       `json:"podNames"`
}

type exportedResult struct {
	Karpenter     string         `json:"karpenter"`
	Input         inputSummary   `json:"input"`
	SolveSeconds  float64        `json:"solveSeconds"`
	PodsScheduled int            `json:"podsScheduled"`
	PodErrors     int            `json:"podErrors"`
	Nodes         int            `json:"nodes"`
	PricePerHour  float64        `json:"pricePerHour"`
	NodeList      []exportedNode `json:"nodeList"`
}

type podList struct {
	APIVersion string        `json:"apiVersion"`
	Kind       string        `json:"kind"`
	Items      []*corev1.Pod `json:"items"`
}

type exportedOffering struct {
	Zone         string  `json:"zone"`
	CapacityType string  `json:"capacityType"`
	Price        float64 `json:"price"`
	Available    bool    `json:"available"`
}

type exportedType struct {
	Name         string             `json:"name"`
	Capacity     map[string]int64   `json:"capacity"`
	Overhead     map[string]int64   `json:"overhead"`
	Allocatable  map[string]int64   `json:"allocatable"`
	Offerings    []exportedOffering `json:"offerings"`
	Requirements map[string]string  `json:"requirements"`
}

// quantities: cpu in millicores, everything else in units (bytes, pods).
func quantities(list corev1.ResourceList) map[string]int64 {
	out := map[string]int64{}
	for name, q := range list {
		if name == corev1.ResourceCPU {
			out[string(name)] = q.MilliValue()
		} else {
			out[string(name)] = q.Value()
		}
	}
	return out
}

func podNames(pods []*corev1.Pod) []string {
	names := make([]string, 0, len(pods))
	for _, p := range pods {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	return names
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encoding %s: %s", path, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("writing %s: %s", path, err)
	}
}

func TestNodewrightExport(t *testing.T) {
	dir := os.Getenv("NODEWRIGHT_EXPORT_DIR")
	if dir == "" {
		t.Skip("NODEWRIGHT_EXPORT_DIR not set")
	}
	var sizes []int
	for _, s := range strings.Split(os.Getenv("NODEWRIGHT_EXPORT_SIZES"), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("NODEWRIGHT_EXPORT_SIZES: %q is not a count", s)
		}
		sizes = append(sizes, n)
	}
	version := os.Getenv("NODEWRIGHT_KARPENTER_VERSION")

	// The instance types, as setupScheduler builds them.
	var types []exportedType
	for _, it := range fake.InstanceTypes(400) {
		et := exportedType{
			Name:         it.Name,
			Capacity:     quantities(it.Capacity),
			Overhead:     quantities(it.Overhead.Total()),
			Allocatable:  quantities(it.Allocatable()),
			Requirements: map[string]string{},
		}
		for _, o := range it.Offerings {
			et.Offerings = append(et.Offerings, exportedOffering{
				Zone: o.Zone(), CapacityType: o.CapacityType(), Price: o.Price, Available: o.Available,
			})
		}
		for key, req := range it.Requirements {
			et.Requirements[key] = fmt.Sprintf("%s %v", req.Operator(), req.Values())
		}
		types = append(types, et)
	}
	writeJSON(t, filepath.Join(dir, "instancetypes.json"), types)

	for _, n := range sizes {
		r = rand.New(rand.NewSource(42)) //nolint:gosec // the benchmark's own generator and seed
		pods := makeDiversePods(n)

		list := podList{APIVersion: "v1", Kind: "List"}
		for _, p := range pods {
			c := p.DeepCopy()
			c.APIVersion, c.Kind = "v1", "Pod"
			list.Items = append(list.Items, c)
		}
		writeJSON(t, filepath.Join(dir, fmt.Sprintf("pods-%d.json", n)), list)

		// As benchmarkScheduler does it; one Solve, timed alone.
		ctx = options.ToContext(injection.WithControllerName(context.Background(), "provisioner"), test.Options())
		s, err := setupScheduler(ctx, pods, scheduling.NumConcurrentReconciles(5))
		if err != nil {
			t.Fatalf("creating scheduler: %s", err)
		}
		start := time.Now()
		results, err := s.Solve(ctx, pods)
		elapsed := time.Since(start)
		if err != nil {
			t.Fatalf("solve: %s", err)
		}

		out := exportedResult{
			Karpenter:    version,
			Input:        summarize(pods),
			SolveSeconds: elapsed.Seconds(),
			PodErrors:    len(results.PodErrors),
			Nodes:        len(results.NewNodeClaims),
		}
		byName := map[string]*cloudprovider.InstanceType{}
		for _, it := range cloudProvider.InstanceTypes {
			byName[it.Name] = it
		}
		for _, nc := range results.NewNodeClaims {
			sum := summarize(nc.Pods)
			out.PodsScheduled += len(nc.Pods)
			options := len(nc.InstanceTypeOptions)
			// Launch as Karpenter's fake cloud provider does: cheapest compatible type, then
			// the first compatible available offering of it.
			created, err := cloudProvider.Create(ctx, nc.ToNodeClaim())
			if err != nil {
				t.Fatalf("fake launch: %s", err)
			}
			name := created.Labels[corev1.LabelInstanceTypeStable]
			zone := created.Labels[corev1.LabelTopologyZone]
			capacityType := created.Labels[v1.CapacityTypeLabelKey]
			price, ok := byName[name].OfferingPrice(zone, capacityType)
			if !ok {
				t.Fatalf("no offering %s/%s of %s", zone, capacityType, name)
			}
			out.PricePerHour += price
			out.NodeList = append(out.NodeList, exportedNode{
				InstanceType: name, Zone: zone, CapacityType: capacityType, Price: price,
				Options: options, Pods: len(nc.Pods), ByKind: sum.ByKind,
				CPUMillis: sum.CPUMillis, MemoryBytes: sum.MemoryBytes,
				PodNames: podNames(nc.Pods),
			})
		}
		writeJSON(t, filepath.Join(dir, fmt.Sprintf("karpenter-%d.json", n)), out)
		t.Logf("%d pods: %d nodes, %.4f $/h, %d pod errors, solve %s", n, out.Nodes, out.PricePerHour, out.PodErrors, elapsed)
	}
}
