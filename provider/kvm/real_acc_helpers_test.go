package kvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// Real-stack acceptance tests share one libvirtd (and its pool "default",
// defined by whichever kvm-hostd came first) and one Open vSwitch with every
// other test package and with earlier runs. Every object they create is
// named with a prefix unique to the run (realPrefix), every check looks only
// at objects with that prefix, and a cleanup removes whatever a failed run
// would otherwise leave behind.

// realPrefix returns a short name prefix unique to this test run, e.g.
// "rl4821a3f-": tag (2 letters) + PID + random, all valid in object names.
func realPrefix(tag string) string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s%d%s-", tag, os.Getpid()%100000, hex.EncodeToString(b[:]))
}

// realHostArgs generously overcommit the host: admission counts every
// domain of the shared libvirtd, including other packages' (benchmarks
// keep dozens running), and these VMs idle without an OS anyway.
var realHostArgs = []string{"--cpu-overcommit", "256", "--memory-overcommit", "4"}

// realStart starts one kvm-hostd ("host-a") on the real stack, or stops the
// test when it is not configured (see harness.RealOptions).
// Objects named with prefix are removed when the test ends, in case
// terraform destroy did not get to run.
func realStart(t *testing.T, prefix string) (*harness.Cluster, *client.Client) {
	t.Helper()
	testAccPreCheck(t)
	c := startHosts(t, harness.RealOptions(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: realHostArgs}))
	cl := testAccVMClient(t, c, "host-a")
	// Registered after startHosts, so it runs before the host stops.
	t.Cleanup(func() { realSweep(t, cl, prefix) })
	return c, cl
}

// realObjects lists the domains, volumes (pool "default") and networks of a
// host whose names start with prefix.
func realObjects(ctx context.Context, cl *client.Client, prefix string) (vms []api.VM, vols []api.Volume, nets []api.Network, err error) {
	all, err := cl.ListVMs(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing VMs: %w", err)
	}
	for _, v := range all {
		if strings.HasPrefix(v.Name, prefix) {
			vms = append(vms, v)
		}
	}
	allVols, err := cl.ListVolumes(ctx, "default")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing volumes: %w", err)
	}
	for _, v := range allVols {
		if strings.HasPrefix(v.Name, prefix) {
			vols = append(vols, v)
		}
	}
	allNets, err := cl.ListNetworks(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing networks: %w", err)
	}
	for _, n := range allNets {
		if strings.HasPrefix(n.Name, prefix) {
			nets = append(nets, n)
		}
	}
	return vms, vols, nets, nil
}

// realCheckNothingLeft is a CheckDestroy: no domain, volume or network
// named with prefix is left on the host.
func realCheckNothingLeft(cl *client.Client, prefix string) resource.TestCheckFunc {
	return func(*terraform.State) error {
		vms, vols, nets, err := realObjects(context.Background(), cl, prefix)
		if err != nil {
			return err
		}
		var left []string
		for _, v := range vms {
			left = append(left, "domain "+v.Name)
		}
		for _, v := range vols {
			left = append(left, "volume "+v.Name)
		}
		for _, n := range nets {
			left = append(left, "network "+n.Name)
		}
		if len(left) > 0 {
			return fmt.Errorf("left behind after destroy: %s", strings.Join(left, ", "))
		}
		return nil
	}
}

// realSweep deletes every object named with prefix (domains, then volumes
// children first, then networks). It only does work when a test failed
// before terraform destroy cleaned up; what it removes is logged.
func realSweep(t *testing.T, cl *client.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vms, vols, nets, err := realObjects(ctx, cl, prefix)
	if err != nil {
		t.Logf("sweep %s*: %v", prefix, err)
		return
	}
	for _, v := range vms {
		t.Logf("sweep: deleting leftover domain %s", v.Name)
		if err := cl.DeleteVM(ctx, v.Name, 0); err != nil && !api.IsNotFound(err) {
			t.Logf("sweep: domain %s: %v", v.Name, err)
		}
	}
	// Clones before their bases: retry while something still goes away.
	for pending := vols; len(pending) > 0; {
		var next []api.Volume
		for _, v := range pending {
			t.Logf("sweep: deleting leftover volume %s", v.Name)
			if err := cl.DeleteVolume(ctx, "default", v.Name); err != nil && !api.IsNotFound(err) {
				next = append(next, v)
			}
		}
		if len(next) == len(pending) {
			t.Logf("sweep: could not delete volumes %v", next)
			break
		}
		pending = next
	}
	for _, n := range nets {
		t.Logf("sweep: deleting leftover network %s", n.Name)
		if err := cl.DeleteNetwork(ctx, n.Name); err != nil && !api.IsNotFound(err) {
			t.Logf("sweep: network %s: %v", n.Name, err)
		}
	}
}

// realVirsh runs virsh against the test libvirtd, for checks that look at
// libvirt itself rather than at what kvm-hostd reports. A missing virsh is
// an error (ok stays true): the real stack has it, and a check that cannot
// look must not pass.
func realVirsh(args ...string) (out string, ok bool, err error) {
	bin, lerr := exec.LookPath("virsh")
	if lerr != nil {
		return "", true, fmt.Errorf("virsh not installed (scripts/install-deps.sh): %w", lerr)
	}
	uri := os.Getenv("KVM_TEST_LIBVIRT_URI")
	var stderr bytes.Buffer
	cmd := exec.Command(bin, append([]string{"-c", uri}, args...)...)
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return string(b), true, fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(b), true, nil
}

// realOVSVsctl runs ovs-vsctl against the test OVS (KVM_TEST_OVSDB, which
// is in ovs-vsctl's --db syntax, e.g. unix:/run/openvswitch/db.sock).
func realOVSVsctl(args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("ovs-vsctl", append([]string{"--db=" + os.Getenv("KVM_TEST_OVSDB"), "--timeout=10"}, args...)...)
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return string(b), fmt.Errorf("ovs-vsctl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(b)), nil
}

// stateAttr reads one flatmap attribute of a resource from the state.
func stateAttr(s *terraform.State, addr, key string) (string, error) {
	rs, ok := s.RootModule().Resources[addr]
	if !ok || rs.Primary == nil {
		return "", fmt.Errorf("%s is not in the state", addr)
	}
	v, ok := rs.Primary.Attributes[key]
	if !ok {
		return "", fmt.Errorf("%s has no attribute %s", addr, key)
	}
	return v, nil
}

// terraformParallelismWrapper makes the terraform binary that
// terraform-plugin-testing runs honour a chosen -parallelism.
//
// terraform-exec always passes -parallelism=10 to apply, plan and destroy,
// and TF_CLI_ARGS_apply cannot override it: terraform inserts those
// arguments right after the subcommand, before terraform-exec's own, and
// the last -parallelism wins. So TF_ACC_TERRAFORM_PATH (read by every
// resource.Test) is pointed, for the test's duration, at a script that
// rewrites -parallelism=N to the number in the returned control file (left
// alone while the file is empty) and logs every command line to the
// returned log file.
func terraformParallelismWrapper(t *testing.T) (control, logFile string) {
	t.Helper()
	real := os.Getenv("TF_ACC_TERRAFORM_PATH")
	if real == "" {
		p, err := exec.LookPath("terraform")
		if err != nil {
			t.Skip("terraform not found: set TF_ACC_TERRAFORM_PATH")
		}
		real = p
	}
	real, err := filepath.Abs(real)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	control, logFile = filepath.Join(dir, "parallelism"), filepath.Join(dir, "args.log")
	if err := os.WriteFile(control, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
n=$(cat %[1]q 2>/dev/null)
for a in "$@"; do
  shift
  case "$a" in
    -parallelism=*) [ -n "$n" ] && a="-parallelism=$n" ;;
  esac
  set -- "$@" "$a"
done
echo "$*" >> %[2]q
exec %[3]q "$@"
`, control, logFile, real)
	wrapper := filepath.Join(dir, "terraform")
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TF_ACC_TERRAFORM_PATH", wrapper)
	return control, logFile
}

// checkTerraformRan checks that terraform was run with a subcommand and an
// argument (e.g. "apply", "-parallelism=30") since the log was last reset.
func checkTerraformRan(logFile, sub, arg string) error {
	b, err := os.ReadFile(logFile)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == sub && strings.Contains(" "+line+" ", " "+arg+" ") {
			return nil
		}
	}
	return fmt.Errorf("terraform %s never ran with %s; command lines:\n%s", sub, arg, b)
}
