// Command hostdclone times linked-clone creation through kvm-hostd (the
// provider's path: PUT /v1/pools/{pool}/volumes/{name} with base_volume,
// answered after the volume is read back) on a small and on a big base, so
// `make bench` can show that clone time does not depend on the base's size.
//
//	hostdclone -endpoint http://127.0.0.1:7701 -token T -samples 7
//
// It prints "RESULT key seconds" lines (medians) like rawfloor, and deletes
// every volume it made, also after a failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

func main() {
	endpoint := flag.String("endpoint", "", "kvm-hostd base URL")
	token := flag.String("token", os.Getenv("KVM_TOKEN"), "bearer token (default $KVM_TOKEN)")
	pool := flag.String("pool", "default", "storage pool")
	prefix := flag.String("prefix", "hostdclone", "name prefix of every volume made")
	samples := flag.Int("samples", 7, "clones per base (median reported)")
	smallMiB := flag.Int64("small-mib", 64, "small base size")
	bigMiB := flag.Int64("big-mib", 4096, "big base size (sparse qcow2)")
	flag.Parse()

	c, err := client.New(client.Options{Endpoint: *endpoint, Token: *token, Owner: "kvm-bench"})
	if err != nil {
		fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var made []string
	defer func() {
		for i := len(made) - 1; i >= 0; i-- {
			_ = c.DeleteVolume(context.Background(), *pool, made[i])
		}
	}()
	for _, b := range []struct {
		key  string
		size int64
	}{{"hostd_clone_small_base_s", *smallMiB}, {"hostd_clone_big_base_s", *bigMiB}} {
		base := fmt.Sprintf("%s-base-%d", *prefix, b.size)
		made = append(made, base)
		if _, err := c.PutVolume(ctx, *pool, base, api.VolumeSpec{SizeMiB: b.size, Format: api.FormatQCOW2}); err != nil {
			fail(c, *pool, made, fmt.Errorf("base %s: %w", base, err))
		}
		var ts []float64
		for i := range *samples {
			name := fmt.Sprintf("%s-clone-%d-%d", *prefix, b.size, i)
			made = append(made, name)
			start := time.Now()
			if _, err := c.PutVolume(ctx, *pool, name, api.VolumeSpec{Format: api.FormatQCOW2, BaseVolume: base}); err != nil {
				fail(c, *pool, made, fmt.Errorf("clone %s: %w", name, err))
			}
			ts = append(ts, time.Since(start).Seconds())
			if err := c.DeleteVolume(ctx, *pool, name); err == nil {
				made = made[:len(made)-1]
			}
		}
		fmt.Printf("RESULT %s %.4f\n", b.key, median(ts))
	}
}

func fail(c *client.Client, pool string, made []string, err error) {
	for i := len(made) - 1; i >= 0; i-- {
		_ = c.DeleteVolume(context.Background(), pool, made[i])
	}
	fatal(err)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "hostdclone:", err)
	os.Exit(1)
}

func median(xs []float64) float64 {
	sort.Float64s(xs)
	if len(xs) == 0 {
		return 0
	}
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}
