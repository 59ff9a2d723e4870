package hypervisor

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kdomanski/iso9660"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// seedISO renders a NoCloud seed image (volume label "cidata").
func seedISO(vm string, ci *api.CloudInit) ([]byte, error) {
	w, err := iso9660.NewWriter()
	if err != nil {
		return nil, fmt.Errorf("seed ISO: %w", err)
	}
	defer func() { _ = w.Cleanup() }()
	meta := ci.MetaData
	if meta == "" {
		// cloud-init needs an instance-id to run at all.
		meta = fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", vm, vm)
	}
	files := []struct{ name, body string }{
		{"user-data", ci.UserData},
		{"meta-data", meta},
	}
	if ci.NetworkConfig != "" {
		files = append(files, struct{ name, body string }{"network-config", ci.NetworkConfig})
	}
	for _, f := range files {
		if err := w.AddFile(strings.NewReader(f.body), f.name); err != nil {
			return nil, fmt.Errorf("seed ISO %s: %w", f.name, err)
		}
	}
	var buf bytes.Buffer
	if err := w.WriteTo(&buf, "cidata"); err != nil {
		return nil, fmt.Errorf("seed ISO: %w", err)
	}
	return buf.Bytes(), nil
}

// writeSeedISO writes the seed image for vm into dir, atomically so a
// running guest never sees half a file.
func writeSeedISO(dir, vm string, ci *api.CloudInit) (string, error) {
	img, err := seedISO(vm, ci)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, vm+"-cidata.iso")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, img, 0o644); err != nil {
		return "", fmt.Errorf("write seed ISO: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("write seed ISO: %w", err)
	}
	return path, nil
}
