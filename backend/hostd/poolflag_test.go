package hostd

import (
	"io"
	"slices"
	"strings"
	"testing"
)

// TestPoolFlags: --pool and --shared-pool repeat or take commas, come from
// KVM_HOSTD_POOL / KVM_HOSTD_SHARED_POOL (a flag on the command line
// replaces the environment), and a shared pool must be served.
func TestPoolFlags(t *testing.T) {
	env := map[string]string{"KVM_HOSTD_POOL": "nfs1,ceph1", "KVM_HOSTD_SHARED_POOL": "nfs1"}
	cfg, err := ParseFlags([]string{"--name", "n"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Pools, []string{"nfs1", "ceph1"}) || !slices.Equal(cfg.SharedPools, []string{"nfs1"}) {
		t.Fatalf("from the environment: pools %v, shared %v", cfg.Pools, cfg.SharedPools)
	}
	cfg, err = ParseFlags([]string{"--name", "n", "--pool", "a", "--pool", "b,c", "--shared-pool", "c"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Pools, []string{"a", "b", "c"}) || !slices.Equal(cfg.SharedPools, []string{"c"}) {
		t.Fatalf("flags over the environment: pools %v, shared %v", cfg.Pools, cfg.SharedPools)
	}
	for args, want := range map[string]string{
		"--shared-pool x":   `--shared-pool "x": not a served pool`,
		"--pool default":    `is always served`,
		"--pool a --pool a": `given twice`,
		"--pool bad/name":   `--pool "bad/name"`,
	} {
		_, err := ParseFlags(append([]string{"--name", "n"}, strings.Fields(args)...), func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", args, err, want)
		}
	}
}
