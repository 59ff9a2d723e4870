package service

import (
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestRefuseUnmodelledDevices(t *testing.T) {
	ours := &api.VM{Name: "web", VMSpec: api.VMSpec{
		Disks:      []api.VMDisk{{Pool: "default", Volume: "web-root", Target: "vda"}},
		Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:01", Bridge: "kvm-lan"}},
	}}
	if err := refuseUnmodelledDevices(ours); err != nil {
		t.Fatalf("our own VM refused: %v", err)
	}
	foreign := &api.VM{Name: "legacy", VMSpec: api.VMSpec{
		Disks:      []api.VMDisk{{Pool: "default", Volume: "legacy-root", Target: "vda"}, {Target: "vdb"}},
		Interfaces: []api.VMInterface{{MAC: "52:54:00:aa:bb:01", Bridge: "br0"}},
	}}
	err := refuseUnmodelledDevices(foreign)
	if !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("foreign VM: got %v, want a conflict", err)
	}
	for _, want := range []string{"disk vdb", "interface 52:54:00:aa:bb:01", "bridge br0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}
