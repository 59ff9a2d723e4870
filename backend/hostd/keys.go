package hostd

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/backend/hypervisor"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// keySuffix ends the file name of every master key in --key-dir.
const keySuffix = ".key"

// maxKeyBytes bounds what is read of a key file: a key is a few dozen
// random bytes, not a file to slurp.
const maxKeyBytes = 4096

// readKeyDir loads the named disk-encryption master keys of --key-dir:
// every NAME.key file. Like the token file, a key others could read is
// refused, and so is one too short to be a key (at least 32 bytes, taken
// as they are: binary from /dev/urandom or text, both work). The key
// bytes stay in memory; their names are all kvm-hostd ever reports.
func readKeyDir(dir string) (map[string][]byte, error) {
	keys := map[string][]byte{}
	if dir == "" {
		return keys, nil
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("--key-dir: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("--key-dir %s is not a directory", dir)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return nil, fmt.Errorf("--key-dir %s may be written by other users (mode %#o); chmod go-w it", dir, perm)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("--key-dir: %w", err)
	}
	var errs []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), keySuffix)
		if !ok || e.IsDir() {
			continue
		}
		k, err := readKeyFile(filepath.Join(dir, e.Name()), name)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		keys[name] = k
	}
	if len(errs) > 0 {
		for _, k := range keys {
			clear(k)
		}
		sort.Strings(errs)
		return nil, fmt.Errorf("--key-dir %s: %s", dir, strings.Join(errs, "; "))
	}
	return keys, nil
}

func readKeyFile(path, name string) ([]byte, error) {
	if err := api.ValidateName("key", name); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is accessible by other users (mode %#o); chmod 600 it", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	switch {
	case len(b) > maxKeyBytes:
		clear(b)
		return nil, fmt.Errorf("%s is larger than %d bytes: not a key", path, maxKeyBytes)
	case len(b) < hypervisor.MinKeyBytes:
		n := len(b)
		clear(b)
		return nil, fmt.Errorf("%s holds %d bytes; a key needs at least %d random bytes (head -c 32 /dev/urandom > %s)",
			path, n, hypervisor.MinKeyBytes, path)
	}
	return b, nil
}
