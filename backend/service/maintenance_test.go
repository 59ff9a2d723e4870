package service_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestMaintenance drives maintenance through a real kvm-hostd: in
// maintenance a new VM and an arriving migration's reservation are refused
// with 409 "maintenance", a VM already there can still change, the
// inventory says so, and with --state-dir the state survives a restart.
func TestMaintenance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	stateDir := t.TempDir()
	c := harness.Start(t, harness.Options{Hosts: []string{"mnt"}, ExtraArgs: []string{"--state-dir", stateDir}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := func() *client.Client {
		cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	h := cl()
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64}
	if _, err := h.PutVM(ctx, "before", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := h.SetMaintenance(ctx, api.Maintenance{Enabled: true, Reason: "bad\nline"}); !api.IsCode(err, api.CodeInvalid) {
		t.Fatalf("a reason with a newline: %v, want 400 invalid", err)
	}
	m, err := h.SetMaintenance(ctx, api.Maintenance{Enabled: true, Reason: "CHG-42"})
	if err != nil || !m.Enabled || m.Reason != "CHG-42" {
		t.Fatalf("SetMaintenance: %+v, %v", m, err)
	}
	wantRefused := func(what string, err error) {
		t.Helper()
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != api.CodeMaintenance {
			t.Fatalf("%s in maintenance: %v, want 409 %q", what, err, api.CodeMaintenance)
		}
		if !strings.Contains(ae.Message, "host mnt is in maintenance (CHG-42)") {
			t.Errorf("%s: message %q does not name the host and the reason", what, ae.Message)
		}
	}
	_, err = h.PutVM(ctx, "new", spec)
	wantRefused("a create", err)
	_, err = h.PutReservation(ctx, "arriving", api.ReservationSpec{VCPU: 1, MemoryMiB: 64})
	wantRefused("a migration's reservation", err)
	// Existing VMs are untouched: a retried create and a resize pass.
	if _, err := h.PutVM(ctx, "before", spec); err != nil {
		t.Errorf("retried create of an existing VM in maintenance: %v", err)
	}
	if _, err := h.UpdateVM(ctx, "before", api.VMSpec{VCPU: 2, MemoryMiB: 64}); err != nil {
		t.Errorf("resizing an existing VM in maintenance: %v", err)
	}
	inv, err := h.Host(ctx)
	if err != nil || !inv.Maintenance || inv.MaintenanceReason != "CHG-42" {
		t.Fatalf("inventory in maintenance: %+v, %v", inv, err)
	}

	// A restart keeps it (the state directory records it).
	if err := c.Hosts[0].Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Hosts[0].Start(); err != nil {
		t.Fatal(err)
	}
	h = cl()
	if inv, err = h.Host(ctx); err != nil || !inv.Maintenance || inv.MaintenanceReason != "CHG-42" {
		t.Fatalf("inventory after a restart: maintenance %v (%q), %v; want it kept", inv.Maintenance, inv.MaintenanceReason, err)
	}
	if m, err = h.SetMaintenance(ctx, api.Maintenance{Enabled: false, Reason: "ignored"}); err != nil || m.Enabled || m.Reason != "" {
		t.Fatalf("leaving maintenance: %+v, %v", m, err)
	}
	if _, err := h.PutVM(ctx, "new", spec); err != nil {
		t.Fatalf("create after maintenance ended: %v", err)
	}
	if inv, err = h.Host(ctx); err != nil || inv.Maintenance {
		t.Fatalf("inventory after maintenance: %+v, %v", inv, err)
	}
}

// TestMaintenanceFlag: --maintenance (or KVM_HOSTD_MAINTENANCE) starts the
// host in maintenance.
func TestMaintenanceFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{Hosts: []string{"mnt-flag"}, Env: []string{"KVM_HOSTD_MAINTENANCE=true"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := h.Host(ctx)
	if err != nil || !inv.Maintenance {
		t.Fatalf("inventory of a host started with KVM_HOSTD_MAINTENANCE=true: %+v, %v", inv, err)
	}
	if _, err := h.PutVM(ctx, "new", api.VMSpec{VCPU: 1, MemoryMiB: 64}); !api.IsCode(err, api.CodeMaintenance) {
		t.Fatalf("create: %v, want 409 maintenance", err)
	}
}
