package kvm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/diag"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Import IDs (DESIGN.md): kvm_disk "<host>/<pool>/<name>", kvm_vm
// "<host>/<name>", kvm_snapshot "<host>/<vm name>/<snapshot name>",
// kvm_network "<name>".

// DiskID builds a kvm_disk ID.
func DiskID(host, pool, name string) string { return host + "/" + pool + "/" + name }

// VMID builds a kvm_vm import ID.
func VMID(host, name string) string { return host + "/" + name }

// SnapshotID builds a kvm_snapshot ID.
func SnapshotID(host, vm, name string) string { return host + "/" + vm + "/" + name }

// splitID splits an ID into exactly n non-empty parts separated by "/".
func splitID(kind, id string, n int, format string) ([]string, error) {
	parts := strings.Split(id, "/")
	if len(parts) != n {
		return nil, fmt.Errorf("%s ID %q must look like %s", kind, id, format)
	}
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("%s ID %q must look like %s", kind, id, format)
		}
	}
	return parts, nil
}

// ParseDiskID parses "<host>/<pool>/<name>".
func ParseDiskID(id string) (host, pool, name string, err error) {
	p, err := splitID("disk", id, 3, "<host>/<pool>/<name>")
	if err != nil {
		return "", "", "", err
	}
	return p[0], p[1], p[2], nil
}

// ParseVMID parses "<host>/<name>".
func ParseVMID(id string) (host, name string, err error) {
	p, err := splitID("VM", id, 2, "<host>/<name>")
	if err != nil {
		return "", "", err
	}
	return p[0], p[1], nil
}

// ParseSnapshotID parses "<host>/<vm name>/<snapshot name>".
func ParseSnapshotID(id string) (host, vm, name string, err error) {
	p, err := splitID("snapshot", id, 3, "<host>/<vm name>/<snapshot name>")
	if err != nil {
		return "", "", "", err
	}
	return p[0], p[1], p[2], nil
}

// isNotFound reports whether a client error means the object is gone.
func isNotFound(err error) bool { return api.IsNotFound(err) }

// addAPIError adds a diagnostic with a title-case summary naming the action
// and a detail naming the resource, keeping the host's message.
func addAPIError(diags *diag.Diagnostics, summary, what string, err error) {
	var e *api.Error
	detail := fmt.Sprintf("%s: %s", what, err)
	if errors.As(err, &e) && e.Status != 0 {
		detail = fmt.Sprintf("%s: %s (HTTP %d, %s)", what, e.Message, e.Status, e.Code)
	}
	diags.AddError(summary, detail)
}
