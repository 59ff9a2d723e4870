package hypervisor

import (
	"bytes"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
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

// qemuUser is the user Debian's libvirt runs QEMU as, if it exists here.
func qemuUser() (uid, gid int, ok bool) {
	u, err := user.Lookup("libvirt-qemu")
	if err != nil {
		return 0, 0, false
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	return uid, gid, err1 == nil && err2 == nil
}

// writeSeedISO writes the seed image for vm into dir, atomically so a
// running guest never sees half a file.
func writeSeedISO(dir, vm string, ci *api.CloudInit) (string, error) {
	img, err := seedISO(vm, ci)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, vm+api.SeedVolumeSuffix)
	tmp := path + ".tmp"
	// The seed carries user-data (keys, passwords): readable by QEMU's user
	// only. libvirt's DAC driver relabels it for QEMU at start as well.
	_ = os.Remove(tmp)
	if err := os.WriteFile(tmp, img, 0o600); err != nil {
		return "", fmt.Errorf("write seed ISO: %w", err)
	}
	if uid, gid, ok := qemuUser(); ok {
		_ = os.Chown(tmp, uid, gid)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("write seed ISO: %w", err)
	}
	return path, nil
}
