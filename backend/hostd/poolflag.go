package hostd

import (
	"errors"
	"fmt"
	"slices"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// ParsePools checks --pool and --shared-pool: names follow the object
// name rules, none repeats, "default" is --pool-dir's (always served, so
// naming it is redundant but harmless only for --shared-pool), and every
// shared pool is also served.
func ParsePools(pools, shared []string) (served, sharedOut []string, err error) {
	var errs []error
	for _, p := range pools {
		if err := api.ValidateName("pool", p); err != nil {
			errs = append(errs, fmt.Errorf("--pool %q: %v", p, err))
			continue
		}
		if p == api.DefaultPool {
			errs = append(errs, fmt.Errorf("--pool %q: the pool %q is always served, at --pool-dir", p, api.DefaultPool))
			continue
		}
		if slices.Contains(served, p) {
			errs = append(errs, fmt.Errorf("--pool %q is given twice", p))
			continue
		}
		served = append(served, p)
	}
	for _, p := range shared {
		if err := api.ValidateName("pool", p); err != nil {
			errs = append(errs, fmt.Errorf("--shared-pool %q: %v", p, err))
			continue
		}
		if p != api.DefaultPool && !slices.Contains(pools, p) {
			errs = append(errs, fmt.Errorf("--shared-pool %q: not a served pool; name it with --pool %s too", p, p))
			continue
		}
		if !slices.Contains(sharedOut, p) {
			sharedOut = append(sharedOut, p)
		}
	}
	return served, sharedOut, errors.Join(errs...)
}
