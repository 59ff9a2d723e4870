// Command planscale times a no-op `terraform plan` against the size of the
// state: for each size it starts that many simulated hosts (one kvm-hostd
// process each on libvirt's test driver, whose state is per process, so every
// process is its own host), applies a generated configuration of networks,
// disks and VMs spread over them, and then runs rounds of
//
//	terraform plan -detailed-exitcode                (refresh: what users run)
//	terraform plan -detailed-exitcode -refresh=false (Terraform's own walk)
//
// reporting medians and spreads, and the HTTP requests each host served
// during one refreshing plan (from kvm-hostd's /metrics), which is where
// coalescing shows: one list call per host and kind instead of one read per
// resource.
//
//	planscale -sizes 100:5,1000:5,5000:50 -rounds 3 -out results.md
//
// The provider comes from TF_CLI_CONFIG_FILE's dev_overrides (bench.sh sets
// them to bin/); kvm-hostd from -hostd or $KVM_HOSTD_BIN. It prints
// "RESULT key value" lines and a markdown table; every process it starts is
// stopped at the end, also after a failure.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

type size struct {
	resources, hosts int
	refs             string
}

func parseSizes(s string) ([]size, error) {
	var out []size
	for _, part := range strings.Split(s, ",") {
		f := strings.Split(strings.TrimSpace(part), ":")
		if len(f) < 2 || len(f) > 3 {
			return nil, fmt.Errorf("size %q is not RESOURCES:HOSTS[:REFS]", part)
		}
		r, h, refs := f[0], f[1], "flat"
		if len(f) == 3 {
			refs = f[2]
		}
		if refs != "flat" && refs != "direct" {
			return nil, fmt.Errorf("size %q: REFS is flat or direct", part)
		}
		rn, err1 := strconv.Atoi(r)
		hn, err2 := strconv.Atoi(h)
		if err1 != nil || err2 != nil || rn < 3 || hn < 1 {
			return nil, fmt.Errorf("size %q is not RESOURCES:HOSTS", part)
		}
		out = append(out, size{rn, hn, refs})
	}
	return out, nil
}

// The goals of issue 17, by resource count.
var goals = map[int]float64{1000: 3, 5000: 10}

// config is the generated workload: nets networks spanning every host, and
// pairs of (disk, VM) spread round-robin over the hosts, each VM on its own
// disk with one NIC on one of the networks. Sizes are tiny: the test driver
// only records them, but admission still counts them.
//
// refs chooses how a VM names its disk and network. "direct" references the
// other resources' instances (kvm_disk.d[count.index].id), as most
// configurations do; Terraform then evaluates the whole kvm_disk.d (every
// instance) for each VM, which costs it time quadratic in the count.
// "flat" builds the same ids from the same inputs, with no reference at
// all: the set-up applies the disks and networks first (vms = false), then
// the VMs. With references (or depends_on), Terraform's apply graph has an
// edge from every VM instance to every disk instance: at 2,500 of each
// (5,000 resources) it grew past 6 GiB and had not started applying after
// 5 minutes, so only the flat form reaches that size.
func config(refs string) string {
	diskID, network := "kvm_disk.d[count.index].id", "kvm_network.n[count.index % var.nets].name"
	if refs == "flat" {
		diskID = `"${var.hosts[count.index % length(var.hosts)]}/default/${format("pd%05d", count.index)}"`
		network = `format("pnet%02d", count.index % var.nets)`
	}
	return `
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

variable "hosts" { type = list(string) }
variable "pairs" { type = number }
variable "nets" { type = number }
variable "vms" {
  type    = bool
  default = true
}

resource "kvm_network" "n" {
  count = var.nets
  name  = format("pnet%02d", count.index)
  vlan  = 100 + count.index
}

resource "kvm_disk" "d" {
  count    = var.pairs
  name     = format("pd%05d", count.index)
  host     = var.hosts[count.index % length(var.hosts)]
  size_mib = 16
  format   = "qcow2"
}

resource "kvm_vm" "v" {
  count              = var.vms ? var.pairs : 0
  name               = format("pv%05d", count.index)
  host               = var.hosts[count.index % length(var.hosts)]
  vcpu               = 1
  memory_mib         = 16
  running            = true
  shutdown_timeout   = 0
  disks              = [{ disk_id = ` + diskID + ` }]
  network_interfaces = [{ network = ` + network + ` }]
}
`
}

func main() {
	sizesFlag := flag.String("sizes", "100:5,1000:5,5000:50", "comma-separated RESOURCES:HOSTS[:REFS], REFS flat (default) or direct (see config)")
	rounds := flag.Int("rounds", 3, "no-op plans per size (median reported)")
	parallelism := flag.Int("parallelism", 10, "terraform -parallelism of the timed plans")
	applyParallelism := flag.Int("apply-parallelism", 50, "terraform -parallelism of the set-up apply")
	nets := flag.Int("nets", 5, "networks (each on every host)")
	tf := flag.String("terraform", os.Getenv("TF_ACC_TERRAFORM_PATH"), "terraform binary")
	out := flag.String("out", "", "also write the markdown table here")
	flag.Parse()
	sizes, err := parseSizes(*sizesFlag)
	if err != nil {
		fatal(err)
	}
	if *tf == "" {
		fatal(fmt.Errorf("-terraform (or TF_ACC_TERRAFORM_PATH) is required"))
	}
	var rows []row
	for _, s := range sizes {
		r, err := runSize(s, *nets, *rounds, *parallelism, *applyParallelism, *tf)
		if err != nil {
			fatal(fmt.Errorf("%d resources on %d hosts: %w", s.resources, s.hosts, err))
		}
		rows = append(rows, r)
	}
	table := render(rows, *rounds, *parallelism)
	table += fmt.Sprintf("\nLoad average (1 min) at the end: %s on %d cores.\n", loadavg(), runtime.NumCPU())
	fmt.Print(table)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(table), 0o644); err != nil {
			fatal(err)
		}
	}
}

type row struct {
	size
	nets, pairs     int
	apply           float64
	plan, noRefresh []float64
	// CPU seconds (user+sys) of terraform and the provider, per plan
	planCPU, noRefreshCPU []float64
	// requests per host during one refreshing plan, by route
	perHost      map[string]float64
	perHostTotal float64
}

func runSize(s size, nets, rounds, par, applyPar int, tf string) (row, error) {
	r := row{size: s}
	if nets > s.resources/3 {
		nets = max(1, s.resources/3)
	}
	r.pairs = (s.resources - nets) / 2
	r.nets = s.resources - 2*r.pairs
	names := make([]string, s.hosts)
	for i := range names {
		names[i] = fmt.Sprintf("sim%02d", i)
	}
	say("%d resources (%d networks, %d disks, %d VMs) on %d simulated hosts, %s references", r.nets+2*r.pairs, r.nets, r.pairs, r.pairs, s.hosts, s.refs)
	cluster, err := harness.StartCluster(harness.Options{
		Hosts: names,
		// Admission is not what is measured: the test driver's host is
		// small, and every VM counts.
		ExtraArgs: []string{"--cpu-overcommit", "1000", "--memory-overcommit", "1000", "--log-level", "warn"},
	})
	if err != nil {
		return r, err
	}
	defer cluster.Stop()
	r.size.resources = r.nets + 2*r.pairs

	dir, err := os.MkdirTemp("", "planscale-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "main.tf"), []byte(config(s.refs)), 0o644); err != nil {
		return r, err
	}
	hostsVar := `["` + strings.Join(names, `","`) + `"]`
	vars := []string{"-var", "hosts=" + hostsVar, "-var", fmt.Sprintf("pairs=%d", r.pairs), "-var", fmt.Sprintf("nets=%d", r.nets)}
	env := append(os.Environ(), "KVM_HOSTS="+cluster.KVMHosts(), "KVM_TOKEN="+cluster.Token,
		"CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1")
	var cpu float64 // of the last run
	run := func(args ...string) (float64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, tf, append(args, vars...)...)
		cmd.Dir, cmd.Env = dir, env
		start := time.Now()
		outb, err := cmd.CombinedOutput()
		d := time.Since(start).Seconds()
		cpu = 0
		if ps := cmd.ProcessState; ps != nil {
			// terraform waits for its provider processes, so its rusage
			// includes theirs
			cpu = (ps.UserTime() + ps.SystemTime()).Seconds()
		}
		if err != nil {
			tailOut := string(outb)
			if len(tailOut) > 4000 {
				tailOut = tailOut[len(tailOut)-4000:]
			}
			return d, fmt.Errorf("terraform %s: %w\n%s", strings.Join(args, " "), err, tailOut)
		}
		return d, nil
	}
	apply := []string{"apply", "-auto-approve", "-input=false", "-no-color", fmt.Sprintf("-parallelism=%d", applyPar)}
	if s.refs == "flat" {
		// Disks and networks first: the VMs name them without a reference.
		t, err := run(append(apply, "-var", "vms=false")...)
		if err != nil {
			return r, err
		}
		r.apply += t
	}
	t, err := run(apply...)
	if err != nil {
		return r, err
	}
	r.apply += t
	say("  apply (set-up, -parallelism=%d): %.1fs", applyPar, r.apply)
	plan := []string{"plan", "-detailed-exitcode", "-input=false", "-no-color", fmt.Sprintf("-parallelism=%d", par)}
	for i := range rounds {
		before := scrape(cluster)
		t, err := run(plan...)
		if err != nil {
			return r, err
		}
		if i == 0 {
			after := scrape(cluster)
			r.perHost = map[string]float64{}
			for k, v := range after {
				r.perHost[k] = (v - before[k]) / float64(s.hosts)
				r.perHostTotal += r.perHost[k]
			}
		}
		r.plan = append(r.plan, t)
		r.planCPU = append(r.planCPU, cpu)
		t, err = run(append(plan, "-refresh=false")...)
		if err != nil {
			return r, err
		}
		r.noRefresh = append(r.noRefresh, t)
		r.noRefreshCPU = append(r.noRefreshCPU, cpu)
		say("  round %d: plan %.2fs (%.1f CPU s), plan -refresh=false %.2fs (%.1f CPU s); load %s", i+1, r.plan[i], r.planCPU[i], t, cpu, loadavg())
	}
	fmt.Printf("RESULT plan_s_%d_%s %.3f\n", r.resources, s.refs, median(r.plan))
	fmt.Printf("RESULT plan_cpu_s_%d_%s %.3f\n", r.resources, s.refs, median(r.planCPU))
	fmt.Printf("RESULT plan_norefresh_s_%d_%s %.3f\n", r.resources, s.refs, median(r.noRefresh))
	fmt.Printf("RESULT plan_requests_per_host_%d_%s %.1f\n", r.resources, s.refs, r.perHostTotal)
	// Destroying is not timed; stopping the hosts drops their test-driver
	// state with them.
	return r, nil
}

// scrape sums kvm_hostd_http_requests_total over every host, by route and
// method (metrics requests themselves are not counted by the server).
func scrape(c *harness.Cluster) map[string]float64 {
	out := map[string]float64{}
	for _, h := range c.Hosts {
		req, _ := http.NewRequest(http.MethodGet, h.URL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "kvm_hostd_http_requests_total{") {
				continue
			}
			labels, val, ok := strings.Cut(strings.TrimPrefix(line, "kvm_hostd_http_requests_total{"), "} ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				continue
			}
			if rt := routeOf(labels); rt != "GET /metrics" {
				out[rt] += v
			}
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return out
}

// routeOf keeps the route label ("GET /v1/vms/{name}") of a metrics line.
func routeOf(labels string) string {
	for _, kv := range strings.Split(labels, ",") {
		k, v, _ := strings.Cut(kv, "=")
		if k == "route" {
			return strings.Trim(v, `"`)
		}
	}
	return "?"
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func spread(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, " / ")
}

func render(rows []row, rounds, par int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### No-op plan against state size (simulated hosts: one kvm-hostd on test:///default each; median of %d rounds, samples in brackets; -parallelism=%d)\n\n", rounds, par)
	b.WriteString("| resources | hosts | references | no-op plan | goal | CPU time of the plan (terraform + provider) | plan -refresh=false (Terraform's walk) | its CPU time | refresh share | HTTP requests per host per plan |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		p, nr := median(r.plan), median(r.noRefresh)
		goal := "–"
		if g, ok := goals[r.resources]; ok {
			verdict := "met"
			if p > g {
				verdict = "**missed**"
			}
			goal = fmt.Sprintf("≤ %.0f s: %s", g, verdict)
		}
		fmt.Fprintf(&b, "| %d (%d networks, %d disks, %d VMs) | %d | %s | %.2f s [%s] | %s | %.1f s | %.2f s [%s] | %.1f s | %.2f s | %s |\n",
			r.resources, r.nets, r.pairs, r.pairs, r.hosts, r.refs, p, spread(r.plan), goal, median(r.planCPU), nr, spread(r.noRefresh), median(r.noRefreshCPU), p-nr, requests(r))
	}
	if len(rows) >= 2 {
		b.WriteString("\nSlope (seconds of no-op plan per 1,000 more resources):")
		for i := 1; i < len(rows); i++ {
			a, z := rows[i-1], rows[i]
			if z.resources == a.resources || z.refs != a.refs {
				continue
			}
			slope := (median(z.plan) - median(a.plan)) / float64(z.resources-a.resources) * 1000
			cslope := (median(z.planCPU) - median(a.planCPU)) / float64(z.resources-a.resources) * 1000
			fmt.Fprintf(&b, " %d→%d (%s): %.2f s wall, %.2f s CPU;", a.resources, z.resources, z.refs, slope, cslope)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func requests(r row) string {
	keys := make([]string, 0, len(r.perHost))
	for k, v := range r.perHost {
		if v >= 0.05 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	parts := []string{fmt.Sprintf("%.0f", r.perHostTotal)}
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, r.perHost[k]))
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return parts[0] + " (" + strings.Join(parts[1:], ", ") + ")"
}

// loadavg is the 1-minute load average: plan times on a shared machine
// depend on it.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "planscale: "+format+"\n", args...)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "planscale:", err)
	os.Exit(1)
}
