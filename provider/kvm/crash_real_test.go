package kvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// TestAccReal_crashCopyAndMigrate kills kvm-hostd in the middle of work
// that spans two real libvirt hosts (network and mount namespaces, each
// with its own libvirtd and storage): the target of a disk's host-to-host
// copy while the bytes stream in, and the source of a live migration while
// libvirt moves the VM. After a normal restart the re-apply converges and
// the sweep finds no orphan domain or volume on either host.
func TestAccReal_crashCopyAndMigrate(t *testing.T) {
	testAccPreCheck(t)
	if os.Getenv("KVM_TEST_REALSTACK") != "1" {
		t.Skip("real-stack test: set KVM_TEST_REALSTACK=1 (make test does)")
	}
	for _, tool := range []string{"libvirtd", "virtlogd", "nsenter", "ip", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("real-stack test: %s not installed (scripts/install-deps.sh)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}})
	byHost := map[string]*realstack.NSHost{"host-a": hs.Host("a"), "host-b": hs.Host("b")}
	opts := harness.Options{
		Hosts:         []string{"host-a", "host-b"},
		LibvirtURI:    "qemu:///system",
		OVSDB:         "embedded",
		ListenIPs:     map[string]string{},
		ExtraHostArgs: map[string][]string{},
		PoolDirs:      map[string]string{},
		Wrap: func(host string, argv []string) *exec.Cmd {
			return byHost[host].Command(argv[0], argv[1:]...)
		},
	}
	for name, h := range byHost {
		opts.ListenIPs[name] = h.IP
		opts.ExtraHostArgs[name] = []string{"--migration-uri", h.URI}
		opts.PoolDirs[name] = "/var/lib/libvirt/images/kvm-crash-test"
	}
	c := startHosts(t, opts)
	t.Setenv("KVM_HOSTS", c.KVMHosts())
	provider := fmt.Sprintf("provider \"kvm\" {\n  token = %q\n}\n", c.Token)
	clients := func() map[string]*client.Client {
		m := map[string]*client.Client{}
		for _, h := range c.Hosts {
			cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token})
			if err != nil {
				t.Fatal(err)
			}
			m[h.Name] = cl
		}
		return m
	}
	// restart stops a host (SIGTERM) or waits for it to have crashed, and
	// starts it with env (nil: no crash hook).
	restart := func(name string, env []string, crashed bool) {
		h := c.Host(name)
		if crashed {
			if !h.Exited(60 * time.Second) {
				t.Fatalf("%s did not die at its crash point", name)
			}
		} else {
			_ = h.Stop()
		}
		h.SetEnv(env)
		if err := h.Start(); err != nil {
			t.Fatal(err)
		}
		t.Setenv("KVM_HOSTS", c.KVMHosts())
	}
	sweep := func(prefix string) resource.TestCheckFunc {
		return func(s *terraform.State) error {
			known := harness.NewKnown()
			for _, rs := range s.RootModule().Resources {
				known.AddResource(rs.Type, func(k string) string { return rs.Primary.Attributes[k] })
			}
			o, err := harness.FindOrphans(context.Background(), clients(), "default", prefix, known)
			if err != nil {
				return err
			}
			if !o.Empty() {
				return fmt.Errorf("after the re-apply: %s", o)
			}
			return nil
		}
	}
	nothingLeft := func(prefix string) resource.TestCheckFunc {
		return func(s *terraform.State) error {
			for name, cl := range clients() {
				if err := realCheckNothingLeft(cl, prefix)(s); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
			return nil
		}
	}

	t.Run("copy.streaming", func(t *testing.T) {
		cfg := func(host string) string {
			return provider + fmt.Sprintf(`
resource "kvm_disk" "d" {
  name     = "kcr-copy"
  host     = %q
  format   = "raw"
  size_mib = 64
}
`, host)
		}
		resource.Test(t, resource.TestCase{
			ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
			CheckDestroy:             nothingLeft("kcr-"),
			Steps: []resource.TestStep{
				{Config: cfg("host-a")},
				{
					PreConfig:   func() { restart("host-b", harness.CrashEnv("copy.streaming"), false) },
					Config:      cfg("host-b"),
					ExpectError: regexp.MustCompile(`(?i)host-b|copy|disk`),
				},
				{
					PreConfig: func() { restart("host-b", nil, true) },
					Config:    cfg("host-b"),
					Check:     sweep("kcr-"),
				},
			},
		})
	})

	t.Run("migrate.started", func(t *testing.T) {
		resource.Test(t, resource.TestCase{
			ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
			CheckDestroy:             nothingLeft("mig-"),
			Steps: []resource.TestStep{
				{Config: migrateTestConfig(provider, "host-a")},
				{
					PreConfig:   func() { restart("host-a", harness.CrashEnv("migrate.started"), false) },
					Config:      migrateTestConfig(provider, "host-b"),
					ExpectError: regexp.MustCompile(`(?i)host-a|migrat`),
				},
				{
					PreConfig: func() { restart("host-a", nil, true) },
					Config:    migrateTestConfig(provider, "host-b"),
					Check:     sweep("mig-"),
				},
			},
		})
	})
}
