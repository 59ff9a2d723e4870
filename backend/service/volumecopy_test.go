package service_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestVolumeCopy covers the host-to-host copy of a detached volume at the
// API level (the provider's move is TestAccDisk_moveDetached): content needs
// the token and is refused while a VM attaches the volume; a copy that
// fails leaves nothing on the target; one that succeeds is idempotent.
func TestVolumeCopy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kvm-hostd processes")
	}
	c := harness.Start(t, harness.Options{Hosts: []string{"cp-a", "cp-b"}})
	ctx := context.Background()
	cl := func(i int) *client.Client {
		cl, err := client.New(client.Options{Endpoint: c.Hosts[i].URL, Token: c.Token, RetryMax: 1})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	a, b := cl(0), cl(1)
	if _, err := a.PutVolume(ctx, "default", "cp-data", api.VolumeSpec{SizeMiB: 8, Format: api.FormatRaw}); err != nil {
		t.Fatal(err)
	}
	spec := api.VolumeSpec{SizeMiB: 8, Format: api.FormatRaw}

	// Content without the token: 401.
	resp, err := http.Get(a.ContentURL("default", "cp-data"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("content without token: %s", resp.Status)
	}

	// A copy with a wrong token fails, and leaves no volume on the target.
	_, err = b.CopyVolume(ctx, "default", "cp-data", api.VolumeCopyRequest{ContentURL: a.ContentURL("default", "cp-data"), Token: "wrong", Spec: spec}, "k1")
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("copy with a wrong token: %v", err)
	}
	if _, err := b.GetVolume(ctx, "default", "cp-data"); !api.IsNotFound(err) {
		t.Fatalf("after a failed copy the target volume should be gone: %v", err)
	}

	// A linked clone needs its base on the target.
	_, err = b.CopyVolume(ctx, "default", "cp-clone", api.VolumeCopyRequest{ContentURL: a.ContentURL("default", "cp-clone"), Token: c.Token,
		Spec: api.VolumeSpec{SizeMiB: 8, BaseVolume: "cp-missing"}}, "k2")
	if !api.IsNotFound(err) || !strings.Contains(err.Error(), "base volume default/cp-missing not found") {
		t.Fatalf("copy of a clone without its base: %v", err)
	}

	// A good copy, then the same key again: same operation, one volume.
	req := api.VolumeCopyRequest{ContentURL: a.ContentURL("default", "cp-data"), Token: c.Token, Spec: spec}
	op1, err := b.CopyVolume(ctx, "default", "cp-data", req, "k3")
	if err != nil {
		t.Fatal(err)
	}
	op2, err := b.CopyVolume(ctx, "default", "cp-data", req, "k3")
	if err != nil || op2.ID != op1.ID {
		t.Fatalf("retried copy: %v, %v; want operation %s", op2, err, op1.ID)
	}
	if v, err := b.GetVolume(ctx, "default", "cp-data"); err != nil || v.SizeMiB != 8 || v.Format != api.FormatRaw {
		t.Fatalf("copied volume: %+v, %v", v, err)
	}
	// Another key: the volume exists, 409.
	if _, err := b.CopyVolume(ctx, "default", "cp-data", req, "k4"); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("copy onto an existing volume: %v", err)
	}

	// Attached to a VM: its content is refused.
	if _, err := a.PutVM(ctx, "cp-vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "cp-data"}}}); err != nil {
		t.Fatal(err)
	}
	hreq, _ := http.NewRequest(http.MethodGet, a.ContentURL("default", "cp-data"), nil)
	hreq.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err = http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "attached to VM(s) cp-vm") {
		t.Fatalf("content of an attached volume: %s %s", resp.Status, body)
	}
}
