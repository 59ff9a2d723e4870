package service_test

import (
	"context"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestPowerVM drives POST /v1/vms/{name}/power on the test driver: each
// state, the restart flag, and a definition (here its user data, which is
// never read back) left alone.
func TestPowerVM(t *testing.T) {
	c := harness.Start(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: []string{"--memory-overcommit", "10"}})
	cl, err := client.New(client.Options{Endpoint: c.Host("host-a").URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const userData = "#cloud-config\npassword: kept\n"
	if _, err := cl.PutVM(ctx, "pw", api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true,
		CloudInit: &api.CloudInit{UserData: userData}}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		state, want string
		restarted   bool
	}{
		{api.PowerStopped, api.StateShutoff, false},
		{api.PowerStopped, api.StateShutoff, false},
		{api.PowerRunning, api.StateRunning, false},
		{api.PowerRunning, api.StateRunning, false},
		{api.PowerRebooted, api.StateRunning, true},
		{api.PowerStopped, api.StateShutoff, false},
		{api.PowerRebooted, api.StateRunning, false}, // a stopped VM is just started
	} {
		vm, err := cl.PowerVM(ctx, "pw", step.state)
		if err != nil {
			t.Fatalf("%s: %v", step.state, err)
		}
		if vm.State != step.want || vm.Restarted != step.restarted || vm.Running != (step.want == api.StateRunning) {
			t.Fatalf("%s: VM is %s (running %v, restarted %v), want %s (restarted %v)", step.state, vm.State, vm.Running, vm.Restarted, step.want, step.restarted)
		}
		if vm.CloudInit == nil || vm.CloudInit.UserDataSHA256 != api.UserDataHash(userData) {
			t.Fatalf("%s: the power change touched the user data: %+v", step.state, vm.CloudInit)
		}
	}
	if _, err := cl.PowerVM(ctx, "pw", "paused"); client.StatusOf(err) != 400 {
		t.Fatalf("state paused: %v, want a 400", err)
	}
	if _, err := cl.PowerVM(ctx, "nope", api.PowerRunning); client.StatusOf(err) != 404 {
		t.Fatalf("missing VM: %v, want a 404", err)
	}
}
