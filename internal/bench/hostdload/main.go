// Command hostdload measures one kvm-hostd under load: its idle RSS, the
// latency of GET /v1/vms with many domains defined, and a burst of
// concurrent API requests (reads and creates mixed) answered without errors
// other than the 409s admission gives.
//
//	hostdload -domains 500 -burst 500 -samples 200 -rounds 3
//
// kvm-hostd runs on libvirt's test driver by default (-libvirt-uri), so the
// numbers are kvm-hostd's own cost, not QEMU's. Requests go over plain
// net/http, without the client's retries, so every error is counted. It
// prints "RESULT key value" lines and a markdown table; the kvm-hostd it
// starts is stopped at the end, also after a failure.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

func main() {
	domains := flag.Int("domains", 500, "domains defined before GET /v1/vms is timed")
	burst := flag.Int("burst", 500, "concurrent requests in each burst")
	samples := flag.Int("samples", 200, "sequential GET /v1/vms timed per round")
	rounds := flag.Int("rounds", 3, "rounds of the list timing and of the burst (medians reported)")
	uri := flag.String("libvirt-uri", "test:///default", "libvirt URI of the kvm-hostd under test")
	out := flag.String("out", "", "also write the markdown table here")
	flag.Parse()

	cluster, err := harness.StartCluster(harness.Options{
		Hosts:      []string{"load"},
		LibvirtURI: *uri,
		// The domains are what is measured, not whether they fit.
		ExtraArgs: []string{"--cpu-overcommit", "1000", "--memory-overcommit", "1000", "--log-level", "warn"},
	})
	if err != nil {
		fatal(err)
	}
	defer cluster.Stop()
	h := cluster.Hosts[0]
	l := &loader{base: h.URL + "/" + api.Version, token: cluster.Token,
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *burst}, Timeout: 2 * time.Minute}}

	time.Sleep(2 * time.Second) // settle after start
	idle := rssKiB(h.PID(), "VmRSS")
	idleAnon, idleFile := rssKiB(h.PID(), "RssAnon"), rssKiB(h.PID(), "RssFile")
	say("idle RSS %d KiB (anonymous %d, file-backed %d)", idle, idleAnon, idleFile)

	say("defining %d domains", *domains)
	if err := l.define(*domains); err != nil {
		fatal(err)
	}
	withDomains := rssKiB(h.PID(), "VmRSS")

	var p50s, p99s, maxs []float64
	for r := range *rounds {
		var lat []float64
		for range *samples {
			start := time.Now()
			code, err := l.do(http.MethodGet, "/vms", nil)
			if err != nil || code != http.StatusOK {
				fatal(fmt.Errorf("GET /v1/vms: %d %v", code, err))
			}
			lat = append(lat, time.Since(start).Seconds())
		}
		sort.Float64s(lat)
		p50s, p99s, maxs = append(p50s, pct(lat, 50)), append(p99s, pct(lat, 99)), append(maxs, lat[len(lat)-1])
		say("round %d: GET /v1/vms with %d domains: p50 %.1f ms, p99 %.1f ms, max %.1f ms", r+1, *domains, 1000*p50s[r], 1000*p99s[r], 1000*maxs[r])
	}

	var bursts []burstResult
	for r := range *rounds {
		b := l.burst(*burst, fmt.Sprintf("burst%d", r))
		bursts = append(bursts, b)
		say("round %d: burst of %d: %v in %.2fs, p99 %.0f ms", r+1, *burst, b.codes, b.wall, 1000*b.p99)
	}
	peak := rssKiB(h.PID(), "VmHWM")

	fmt.Printf("RESULT idle_rss_kib %d\n", idle)
	fmt.Printf("RESULT idle_rss_anon_kib %d\n", idleAnon)
	fmt.Printf("RESULT list_p99_s %.4f\n", median(p99s))
	errors := 0
	for _, b := range bursts {
		errors += b.errors
	}
	fmt.Printf("RESULT burst_errors %d\n", errors)

	var t strings.Builder
	fmt.Fprintf(&t, "\n### kvm-hostd under load (one kvm-hostd on `%s`; %d rounds, median first, samples in brackets)\n\n", *uri, *rounds)
	t.WriteString("| measure | result | goal |\n|---|---|---|\n")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	fmt.Fprintf(&t, "| idle RSS (VmRSS 2 s after start) | %.1f MiB | < 30 MiB: %s |\n", float64(idle)/1024, verdict(idle < 30*1024))
	fmt.Fprintf(&t, "| … of which anonymous (RssAnon: heap, stacks, C libraries' data) | %.1f MiB | – |\n", float64(idleAnon)/1024)
	fmt.Fprintf(&t, "| … of which file-backed (RssFile: the kvm-hostd binary and shared libraries as mapped from the page cache) | %.1f MiB | – |\n", float64(idleFile)/1024)
	fmt.Fprintf(&t, "| RSS with %d domains defined | %.1f MiB | – |\n", *domains, float64(withDomains)/1024)
	fmt.Fprintf(&t, "| peak RSS (VmHWM, whole run) | %.1f MiB | – |\n", float64(peak)/1024)
	fmt.Fprintf(&t, "| GET /v1/vms with %d domains, %d sequential requests: p50 | %.1f ms [%s] | – |\n", *domains, *samples, 1000*median(p50s), ms(p50s))
	fmt.Fprintf(&t, "| GET /v1/vms with %d domains: p99 | %.1f ms [%s] | reported |\n", *domains, 1000*median(p99s), ms(p99s))
	fmt.Fprintf(&t, "| GET /v1/vms with %d domains: max | %.1f ms [%s] | – |\n", *domains, 1000*median(maxs), ms(maxs))
	for i, b := range bursts {
		fmt.Fprintf(&t, "| burst %d: %d concurrent requests (%s) | %s in %.2f s; p50 %.0f ms, p99 %.0f ms | no errors but admission's 409: %s |\n",
			i+1, *burst, b.mix, codes(b.codes), b.wall, 1000*b.p50, 1000*b.p99, verdict(b.errors == 0))
	}
	fmt.Print(t.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(t.String()), 0o644); err != nil {
			fatal(err)
		}
	}
	if errors > 0 {
		os.Exit(1)
	}
}

type loader struct {
	base, token string
	http        *http.Client
}

func (l *loader) do(method, path string, body any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, l.base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+l.token)
	req.Header.Set(api.HeaderOwner, "kvm-bench")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := l.http.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func vmSpec() api.VMSpec {
	return api.VMSpec{VCPU: 1, MemoryMiB: 16, Running: true}
}

// define creates n domains, 16 at a time.
func (l *loader) define(n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			code, err := l.do(http.MethodPut, fmt.Sprintf("/vms/load-%04d", i), vmSpec())
			if err == nil && code >= 300 {
				err = fmt.Errorf("PUT /v1/vms/load-%04d: %d", i, code)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

type burstResult struct {
	mix           string
	codes         map[string]int
	errors        int
	wall          float64
	p50, p99      float64
	transportErrs []string
}

// burst sends n requests at once: a fifth creates a new VM, a fifth lists
// every VM, the rest read one VM each.
func (l *loader) burst(n int, prefix string) burstResult {
	res := burstResult{codes: map[string]int{}}
	var mu sync.Mutex
	var lat []float64
	var wg sync.WaitGroup
	gate := make(chan struct{})
	kinds := map[string]int{}
	for i := range n {
		var method, path string
		var body any
		switch i % 5 {
		case 0:
			method, path, body = http.MethodPut, fmt.Sprintf("/vms/%s-%04d", prefix, i), vmSpec()
		case 1:
			method, path = http.MethodGet, "/vms"
		default:
			method, path = http.MethodGet, fmt.Sprintf("/vms/load-%04d", i%100)
		}
		kinds[method+" "+strings.SplitN(path[1:], "/", 2)[0]+map[bool]string{true: "/{name}", false: ""}[strings.Count(path, "/") > 1]]++
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			start := time.Now()
			code, err := l.do(method, path, body)
			d := time.Since(start).Seconds()
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, d)
			switch {
			case err != nil:
				res.codes["transport error"]++
				res.errors++
				if len(res.transportErrs) < 3 {
					res.transportErrs = append(res.transportErrs, err.Error())
				}
			default:
				res.codes[strconv.Itoa(code)]++
				if code >= 300 && code != http.StatusConflict {
					res.errors++
				}
			}
		}()
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	res.wall = time.Since(start).Seconds()
	sort.Float64s(lat)
	res.p50, res.p99 = pct(lat, 50), pct(lat, 99)
	var parts []string
	for _, k := range sortedKeys(kinds) {
		parts = append(parts, fmt.Sprintf("%d %s", kinds[k], k))
	}
	res.mix = strings.Join(parts, ", ")
	for _, e := range res.transportErrs {
		say("transport error: %s", e)
	}
	return res
}

func sortedKeys(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func codes(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%d × %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

// rssKiB reads a field (VmRSS, VmHWM) of /proc/PID/status.
func rssKiB(pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

func pct(sorted []float64, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	return sorted[min(i, len(sorted)-1)]
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

func ms(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.1f", 1000*x)
	}
	return strings.Join(parts, " / ")
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "hostdload: "+format+"\n", args...)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "hostdload:", err)
	os.Exit(1)
}
