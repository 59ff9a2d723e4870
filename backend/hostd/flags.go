// Package hostd is kvm-hostd's main program as a type: ParseFlags, Run and
// Close, so tests start the real server exactly the way users do.
package hostd

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Config is everything kvm-hostd is told on its command line.
type Config struct {
	Name          string
	Listen        string
	LibvirtURI    string
	OVSDB         string
	PoolDir       string
	TokenFile     string
	ReadTokenFile string
	TLSCert       string
	TLSKey        string
	ClientCA      string
	TunnelIP      string
	MigrationURI  string
	FetchAllow    []netip.Prefix
	Labels        map[string]string
	// PCIDevices are the host PCI devices named for passthrough.
	PCIDevices []service.PCIDevice
	// Pools are the libvirt storage pools the operator defined and names
	// with --pool, served besides "default"; SharedPools those of them
	// (or "default") marked with --shared-pool.
	Pools            []string
	SharedPools      []string
	CPUOvercommit    float64
	MemoryOvercommit float64
	AuditLog         string
	// KeyDir holds the disk-encryption master keys, NAME.key (keys.go).
	KeyDir string
	// StateDir holds kvm-hostd's own state across restarts: the
	// maintenance switch, and what it knows about volumes that are not
	// files (rbd images: a clone's base, source_url, I/O limits).
	StateDir  string
	LogLevel  string
	LogFormat string
	// Maintenance starts the host in maintenance.
	Maintenance bool
	// ShutdownTimeout bounds how long SIGTERM waits for running requests
	// and operations before it cancels them.
	ShutdownTimeout time.Duration
}

// DefaultShutdownTimeout leaves room, within the systemd unit's
// TimeoutStopSec=90s, for the cleanup after it (ShutdownGrace).
const DefaultShutdownTimeout = 60 * time.Second

// ShutdownGrace is how long cancelled operations get to delete what they
// left unfinished.
const ShutdownGrace = 15 * time.Second

// EnvPrefix prefixes the environment variable of every flag:
// --pool-dir is KVM_HOSTD_POOL_DIR.
const EnvPrefix = "KVM_HOSTD_"

// ErrVersion is returned by ParseFlags for --version: the caller prints
// Version and exits 0 (packaging checks run it before any configuration
// exists, so nothing else is parsed or validated).
var ErrVersion = errors.New("version requested")

// versionFlag has no environment variable: a KVM_HOSTD_VERSION left in a
// unit's environment must not turn the daemon into a version printer.
const versionFlag = "version"

// EnvName returns the environment variable for a flag name.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

const usageHeader = `kvm-hostd runs on every KVM host and serves the terraform-provider-kvm API,
driving libvirt/QEMU and Open vSwitch.

Usage:
  kvm-hostd --name host-a --listen 127.0.0.1:7701 \
            --libvirt-uri qemu:///system --ovsdb unix:/var/run/openvswitch/db.sock \
            --pool-dir /var/lib/kvm-hostd/pool --token-file /etc/kvm-hostd/token

Try it anywhere, without daemons or root (libvirt's test driver and an
in-memory OVSDB; without --token-file the API is unauthenticated, which is
only allowed on a loopback address):
  kvm-hostd --name host-a --listen 127.0.0.1:7701 --libvirt-uri test:///default --ovsdb embedded

Live migration: give every host --migration-uri, the libvirt URI its peers
use to reach its libvirtd (e.g. qemu+tcp://10.0.0.12/system), and the same
--pool-dir layout on every host (a linked clone's overlay records its base's
path, which must exist on the target). Disks on a pool every host sees (a
libvirt pool the operator defined on shared storage, served with --pool NAME
and marked --shared-pool NAME; rbd and netfs pools are shared by nature) are
not copied at all.

Every flag can also be set with an environment variable, shown in brackets;
a flag on the command line wins.

Flags:
`

// ParseFlags parses args (without the program name) with environment
// fallbacks. It returns flag.ErrHelp for --help.
func ParseFlags(args []string, getenv func(string) string, out io.Writer) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	hostname, _ := os.Hostname()
	c := &Config{}
	var labels, fetchAllow string
	var pciDevices, pools, sharedPools pciDeviceFlag
	fs := flag.NewFlagSet("kvm-hostd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Name, "name", hostname, "host name reported to the provider")
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:7443", "address to serve the API on (port 0 picks a free port)")
	fs.StringVar(&c.LibvirtURI, "libvirt-uri", "qemu:///system", "libvirt connection URI (qemu:///system, qemu:///session, test:///default)")
	fs.StringVar(&c.OVSDB, "ovsdb", "unix:/var/run/openvswitch/db.sock", "OVSDB endpoint: embedded, unix:PATH or tcp:HOST:PORT")
	fs.StringVar(&c.PoolDir, "pool-dir", "/var/lib/kvm-hostd/pool", "directory of the storage pool named \"default\"")
	fs.StringVar(&c.TokenFile, "token-file", "", "file holding the bearer token clients must present")
	fs.StringVar(&c.ReadTokenFile, "read-token-file", "", "file holding a second bearer token that may only read (every GET; writes get 403), e.g. for CI plan checks")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "TLS certificate file (enables HTTPS)")
	fs.StringVar(&c.TLSKey, "tls-key", "", "TLS private key file")
	fs.StringVar(&c.ClientCA, "client-ca", "", "CA file: require client certificates signed by it (mTLS)")
	fs.StringVar(&c.TunnelIP, "tunnel-ip", "", "this host's underlay IP for overlay network tunnels")
	fs.StringVar(&c.MigrationURI, "migration-uri", "", "libvirt URI other hosts use to reach this host's libvirtd when migrating VMs to it, "+
		"e.g. qemu+tcp://10.0.0.12/system (empty: this host cannot receive VMs)")
	fs.StringVar(&labels, "labels", "", "host labels for placement, e.g. zone=a,gpu=yes")
	fs.StringVar(&fetchAllow, "fetch-allow", "", "networks that source_url downloads and host-to-host copies may reach in addition to the default, "+
		"e.g. 127.0.0.1/32,10.1.0.0/16 (by default loopback, link-local, multicast, unspecified and this host's own addresses are refused)")
	fs.Var(&pciDevices, "pci-device", "a host PCI device VMs may ask for by name (kvm_vm pci_devices), as NAME=ADDRESS, e.g. gpu0=0000:01:00.0; "+
		"repeat the flag (or separate with commas) for more; the host gets the label pci.NAME=true for each device libvirt knows")
	fs.Var(&pools, "pool", "a libvirt storage pool the operator defined (dir, rbd, netfs, ...) that kvm-hostd serves besides \"default\"; "+
		"it is never defined or deleted by kvm-hostd; repeat the flag (or separate with commas) for more")
	fs.Var(&sharedPools, "shared-pool", "a served directory pool that every host sees under the same name and path (e.g. an NFS mount): "+
		"VMs migrate without copying its disks; rbd and netfs pools are shared without it; repeat or separate with commas")
	fs.Float64Var(&c.CPUOvercommit, "cpu-overcommit", 4, "vCPUs admitted per host CPU")
	fs.Float64Var(&c.MemoryOvercommit, "memory-overcommit", 1, "memory admitted per MiB of host memory")
	fs.StringVar(&c.KeyDir, "key-dir", "", "directory of named disk-encryption master keys, NAME.key (mode 0600, at least 32 random bytes), "+
		"e.g. head -c 32 /dev/urandom > DIR/prod.key; kvm_disk encryption = { key = \"prod\" } uses prod.key; give every host that may run the VM the same file")
	fs.BoolVar(&c.Maintenance, "maintenance", false, "start in maintenance: the host admits no new VMs (409 maintenance), arriving migrations included, "+
		"and kvm_cluster_placement moves keys off it; PUT /v1/host/maintenance switches it at run time")
	fs.StringVar(&c.StateDir, "state-dir", "/var/lib/kvm-hostd/state", "directory where kvm-hostd keeps its own state across restarts: "+
		"the maintenance switch, and what it records about volumes that are not files (rbd images: a linked clone's base, source_url, "+
		"I/O limits; libvirt keeps none of it for them)")
	fs.StringVar(&c.AuditLog, "audit-log", "", "append one JSON line per mutating request to this file")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "json", "json or text")
	showVersion := fs.Bool(versionFlag, false, "print the version and exit")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout,
		"on SIGTERM, how long to wait for running requests and operations (downloads, copies, migrations) before cancelling them")
	fs.Usage = func() {
		fmt.Fprint(out, usageHeader)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" {
				def = fmt.Sprintf(" (default %q)", f.DefValue)
			}
			if f.Name == versionFlag {
				fmt.Fprintf(out, "  --%s\n        %s\n", f.Name, f.Usage)
				return
			}
			fmt.Fprintf(out, "  --%s\n        %s%s [%s]\n", f.Name, f.Usage, def, EnvName(f.Name))
		})
	}
	// Environment first, so explicit flags override it.
	var envErrs []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == versionFlag {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				envErrs = append(envErrs, fmt.Sprintf("%s=%q: %v", EnvName(f.Name), v, err))
			}
		}
	})
	pciDevices.fromEnv = len(pciDevices.raw) > 0
	pools.fromEnv = len(pools.raw) > 0
	sharedPools.fromEnv = len(sharedPools.raw) > 0
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	// --version answers even when the environment is broken.
	if *showVersion {
		return nil, ErrVersion
	}
	if len(envErrs) > 0 {
		sort.Strings(envErrs)
		return nil, fmt.Errorf("invalid environment: %s", strings.Join(envErrs, "; "))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	var err error
	if c.Labels, err = ParseLabels(labels); err != nil {
		return nil, err
	}
	if c.PCIDevices, err = ParsePCIDevices(pciDevices.raw); err != nil {
		return nil, err
	}
	if c.Pools, c.SharedPools, err = ParsePools(pools.raw, sharedPools.raw); err != nil {
		return nil, err
	}
	if c.FetchAllow, err = service.ParseFetchAllow(fetchAllow); err != nil {
		return nil, fmt.Errorf("--fetch-allow: %w", err)
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("--name is required"))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", c.Listen, err))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if c.ClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("--client-ca needs --tls-cert and --tls-key"))
	}
	if c.TokenFile == "" && c.ClientCA == "" && !c.loopbackOnly() {
		// Without a token the API is open: fine for trying kvm-hostd on
		// one's own machine, never on an address others can reach.
		errs = append(errs, errors.New("--token-file is required (or --client-ca for certificate-only auth) unless --listen is a loopback address"))
	}
	if c.ReadTokenFile != "" && c.TokenFile == "" && c.ClientCA == "" {
		errs = append(errs, errors.New("--read-token-file needs --token-file (or --client-ca) for writes"))
	}
	if c.TunnelIP != "" && net.ParseIP(c.TunnelIP) == nil {
		errs = append(errs, fmt.Errorf("--tunnel-ip %q is not an IP address", c.TunnelIP))
	}
	if c.MigrationURI != "" {
		if err := api.ValidateMigrationURI(c.MigrationURI); err != nil {
			errs = append(errs, fmt.Errorf("--migration-uri %q: %v (e.g. qemu+tcp://10.0.0.12/system)", c.MigrationURI, err))
		}
	}
	if c.CPUOvercommit <= 0 || c.MemoryOvercommit <= 0 {
		errs = append(errs, errors.New("--cpu-overcommit and --memory-overcommit must be positive"))
	}
	if c.OVSDB != "embedded" && c.OVSDB != "none" && !strings.HasPrefix(c.OVSDB, "unix:") && !strings.HasPrefix(c.OVSDB, "tcp:") {
		errs = append(errs, fmt.Errorf("--ovsdb %q must be embedded, unix:PATH or tcp:HOST:PORT", c.OVSDB))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q must be debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// loopbackOnly reports whether --listen binds a loopback address only.
func (c *Config) loopbackOnly() bool {
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Unauthenticated reports whether the API runs without any client auth
// (allowed on loopback only).
func (c *Config) Unauthenticated() bool { return c.TokenFile == "" && c.ClientCA == "" }

// ParseLabels parses "k=v,k2=v2".
func ParseLabels(s string) (map[string]string, error) {
	m := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return m, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels: %q is not key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

// String renders the overcommit ratios for logs.
func ratio(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
