package kvm

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

func pciList(names ...string) types.List {
	v := make([]attr.Value, len(names))
	for i, n := range names {
		v[i] = types.StringValue(n)
	}
	return types.ListValueMust(types.StringType, v)
}

func TestPCIDevicesRestartAndMigration(t *testing.T) {
	ctx := context.Background()
	base := vmModel{Name: types.StringValue("vm"), Host: types.StringValue("host-a"), VCPU: types.Int64Value(1),
		MemoryMiB: types.Int64Value(64), MaxMemoryMiB: types.Int64Value(64), Migration: types.StringValue("live"), PCIDevices: pciList("gpu0")}

	plan := base
	if got := vmRestartAttributes(ctx, base, plan); len(got) != 0 {
		t.Errorf("same devices: restart for %v", got)
	}
	for _, l := range []types.List{pciList("gpu0", "nic1"), pciList(), types.ListNull(types.StringType), types.ListUnknown(types.StringType)} {
		plan.PCIDevices = l
		if got := vmRestartAttributes(ctx, base, plan); !slices.Contains(got, "pci_devices") {
			t.Errorf("pci_devices %v: restart for %v, want pci_devices", l, got)
		}
	}

	check := func(state vmModel, plan vmModel) diag.Diagnostics {
		var d diag.Diagnostics
		checkPCIMigration(ctx, plan, &state, &d)
		return d
	}
	moved := base
	moved.Host = types.StringValue("host-b")
	if d := check(base, moved); !d.HasError() || !strings.Contains(d[0].Detail(), "pci_devices gpu0") {
		t.Errorf("live migration with a device: %v", d)
	}
	moved.Migration = types.StringValue("offline")
	if d := check(base, moved); !d.HasError() {
		t.Error("offline migration with a device allowed")
	}
	moved.PCIDevices = types.ListNull(types.StringType)
	if d := check(base, moved); !d.HasError() {
		t.Error("a migration that also removes the devices allowed: it moves them first")
	}
	moved.Migration = types.StringValue("replace")
	if d := check(base, moved); d.HasError() {
		t.Errorf("replace: %v", d)
	}
	// Devices added while moving are taken on the new host.
	bare := base
	bare.PCIDevices = types.ListNull(types.StringType)
	moved = base
	moved.Host = types.StringValue("host-b")
	if d := check(bare, moved); d.HasError() {
		t.Errorf("adding devices while moving: %v", d)
	}
	if d := check(base, base); d.HasError() {
		t.Errorf("no move: %v", d)
	}
}
