package kvm

import (
	"encoding/xml"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
)

// Real-stack checks that read what libvirt itself holds after an apply,
// through virsh: an independent view of what the provider asked for.

// realBlkdeviotune reads a domain disk's I/O limits from libvirt (virsh
// blkdeviotune), live or from the persistent definition (--config).
func realBlkdeviotune(dom, target string, config bool) (map[string]int64, error) {
	args := []string{"blkdeviotune", dom, target}
	if config {
		args = append(args, "--config")
	} else {
		args = append(args, "--live")
	}
	out, _, err := realVirsh(args...)
	if err != nil {
		return nil, err
	}
	got := map[string]int64{}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue // e.g. group_name
		}
		got[strings.TrimSpace(k)] = n
	}
	if _, ok := got["read_bytes_sec"]; !ok {
		return nil, fmt.Errorf("virsh %s printed no limits:\n%s", strings.Join(args, " "), out)
	}
	return got, nil
}

// realCheckIOTune checks libvirt's limits of the VM's first disk (vda), live
// and in its definition; limits absent from want must be 0.
func realCheckIOTune(dom string, want map[string]int64) resource.TestCheckFunc {
	return func(*terraform.State) error {
		for _, config := range []bool{false, true} {
			got, err := realBlkdeviotune(dom, "vda", config)
			if err != nil {
				return err
			}
			for _, k := range []string{"read_bytes_sec", "write_bytes_sec", "read_iops_sec", "write_iops_sec", "total_bytes_sec", "total_iops_sec"} {
				if got[k] != want[k] {
					return fmt.Errorf("libvirt's %s of %s vda (config=%v) is %d, want %d (all: %v)", k, dom, config, got[k], want[k], got)
				}
			}
		}
		return nil
	}
}

// TestAccReal_diskIOTuneInLibvirt applies a disk's iotune on a running VM
// and reads the limits back from libvirt: set at create, changed in place,
// removed.
func TestAccReal_diskIOTuneInLibvirt(t *testing.T) {
	prefix := realPrefix("io")
	c, cl := realStart(t, prefix)
	vmName := prefix + "vm"
	cfg := func(iotune string) string {
		return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_disk" "data" {
  name     = "%[1]sdata"
  host     = "host-a"
  size_mib = 16
  %[2]s
}

resource "kvm_vm" "vm" {
  name             = "%[1]svm"
  host             = "host-a"
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
  disks            = [{ disk_id = kvm_disk.data.id }]
}
`, prefix, iotune)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             realCheckNothingLeft(cl, prefix),
		Steps: []resource.TestStep{
			{
				Config: cfg(`iotune = { read_bytes_sec = 1048576, write_iops_sec = 200 }`),
				Check:  realCheckIOTune(vmName, map[string]int64{"read_bytes_sec": 1048576, "write_iops_sec": 200}),
			},
			{
				Config: cfg(`iotune = { write_bytes_sec = 10485760, read_iops_sec = 500 }`),
				Check:  realCheckIOTune(vmName, map[string]int64{"write_bytes_sec": 10485760, "read_iops_sec": 500}),
			},
			{
				Config: cfg(""),
				Check:  realCheckIOTune(vmName, map[string]int64{}),
			},
		},
	})
}

// realCheckSnapshotMemory compares a kvm_snapshot's include_memory with what
// libvirt stored for it (virsh snapshot-dumpxml: <memory snapshot='internal'
// or 'external'> holds the memory, 'no' does not).
func realCheckSnapshotMemory(addr, dom, snap string) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		inState, err := stateAttr(s, addr, "include_memory")
		if err != nil {
			return err
		}
		out, _, err := realVirsh("snapshot-dumpxml", dom, snap)
		if err != nil {
			return err
		}
		var x struct {
			State  string `xml:"state"`
			Memory struct {
				Snapshot string `xml:"snapshot,attr"`
			} `xml:"memory"`
		}
		if err := xml.Unmarshal([]byte(out), &x); err != nil {
			return fmt.Errorf("snapshot %s of %s: %w", snap, dom, err)
		}
		stored := x.Memory.Snapshot == "internal" || x.Memory.Snapshot == "external"
		if strconv.FormatBool(stored) != inState {
			return fmt.Errorf("%s: include_memory = %s in the state, but libvirt stored <memory snapshot='%s'/> (state %s)", addr, inState, x.Memory.Snapshot, x.State)
		}
		return nil
	}
}
