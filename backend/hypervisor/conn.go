// Package hypervisor drives the host's libvirt (qemu:///system on real hosts,
// test:///default for the embedded default) behind service.Hypervisor.
//
// libvirt is the only source of truth: what the service needs to read back
// that libvirt does not model (owner, tags, cloud-init, the pool/volume a
// disk came from) lives in the domain's <metadata> under our own namespace,
// and per-volume extras live in an extended attribute of the volume file.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var _ service.Hypervisor = (*Libvirt)(nil)

// Libvirt implements service.Hypervisor on one libvirt connection.
type Libvirt struct {
	uri string
	log *slog.Logger

	mu   sync.Mutex // guards conn
	conn *libvirt.Connect

	test     bool       // libvirt's in-process test driver
	virtType string     // domain type of new domains: kvm, qemu or test
	probed   *HostProbe // what the startup probe found

	// The test driver has no files to hang extended attributes on, so
	// per-volume extras live here (keyed by volume path) instead.
	memMu   sync.Mutex
	memMeta map[string]volMeta
	// stateDir holds the extras of volumes that are not files (rbd.go).
	stateDir string

	// keys are the disk-encryption master keys by name (see secrets.go);
	// name is the host's name for error messages.
	keysMu sync.Mutex
	keys   map[string][]byte
	name   string
	// shared names the pools every host sees alike (SetSharedPools).
	sharedMu sync.Mutex
	shared   map[string]bool
	// caps caches the capabilities' NUMA layout (see numaLayout).
	capsMu sync.Mutex
	caps   *capsLayout
}

// Open connects to libvirt at uri.
func Open(uri string, log *slog.Logger) (*Libvirt, error) {
	if log == nil {
		log = slog.Default()
	}
	l := &Libvirt{uri: uri, log: log, memMeta: map[string]volMeta{}}
	c, err := l.dial()
	if err != nil {
		return nil, err
	}
	l.conn = c
	if err := l.probe(c); err != nil {
		_, _ = c.Close()
		return nil, err
	}
	return l, nil
}

func (l *Libvirt) dial() (*libvirt.Connect, error) {
	c, err := libvirt.NewConnect(l.uri)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "connect to libvirt %s: %v", l.uri, err)
	}
	return c, nil
}

// probe decides once how this host runs guests (see probe.go): libvirt's
// test driver runs none; a real libvirt boots a throwaway guest per
// candidate and keeps the one that runs it fastest.
func (l *Libvirt) probe(c *libvirt.Connect) error {
	typ, err := c.GetType()
	if err != nil {
		return fmt.Errorf("libvirt driver type: %w", err)
	}
	if strings.EqualFold(typ, "test") {
		l.test = true
		l.virtType = domainTest
		l.probed = &HostProbe{DomainType: domainTest, Reason: "libvirt's test driver runs no guests: nothing to probe"}
		if l.uri == "test:///default" {
			removeTestDriverSample(c)
		}
		return nil
	}
	facts, err := hostKVMFacts(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := probeHost(ctx, facts, &libvirtBooter{c: c, logDir: localQEMULogDir(l.uri)})
	l.virtType, l.probed = p.DomainType, p
	lvl := slog.LevelInfo
	if !slices.ContainsFunc(p.Attempts, func(a ProbeAttempt) bool { return a.Ran }) {
		lvl = slog.LevelError
	}
	attempts := make([]string, len(p.Attempts))
	for i, a := range p.Attempts {
		attempts[i] = a.String()
	}
	l.log.Log(ctx, lvl, "host probe", "domain_type", p.DomainType, "cpu_mode", p.CPUMode,
		"disable", p.Disable, "reason", p.Reason, "took", p.Took.Round(time.Millisecond), "attempts", attempts)
	return nil
}

// localQEMULogDir is the directory of libvirt's per-domain QEMU logs when
// uri is the system libvirt of this machine, else "".
func localQEMULogDir(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || u.Host != "" || u.Path != "/system" || !strings.HasPrefix(u.Scheme, "qemu") {
		return ""
	}
	return qemuLogDir
}

// Probe returns what the startup probe found.
func (l *Libvirt) Probe() *HostProbe { return l.probed }

// removeTestDriverSample drops the sample domain "test" that libvirt's
// test:///default driver ships with (8 GiB on a 3 GiB node). It is not
// ours, and counting it would make the embedded default refuse every VM as
// over capacity. The test driver's state lives only in this process, so
// nothing real is touched.
func removeTestDriverSample(c *libvirt.Connect) {
	d, err := c.LookupDomainByName("test")
	if err != nil {
		return
	}
	defer d.Free()
	if x, err := d.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, metaNS, libvirt.DOMAIN_AFFECT_CONFIG); err == nil && x != "" {
		return // one of ours after all
	}
	if active, _ := d.IsActive(); active {
		_ = d.Destroy()
	}
	_ = d.Undefine()
}

// Close closes the connection.
func (l *Libvirt) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return nil
	}
	_, err := l.conn.Close()
	l.conn = nil
	return err
}

// ManagesSwitchPorts: QEMU plugs <virtualport type='openvswitch'/> ports
// into OVS itself; the test driver plugs nothing.
func (l *Libvirt) ManagesSwitchPorts() bool { return !l.test }

// Ping checks the connection and re-opens it if it dropped.
func (l *Libvirt) Ping(ctx context.Context) error {
	return l.do(ctx, func(c *libvirt.Connect) error {
		_, err := c.GetLibVersion()
		return err
	})
}

// current returns the live connection, re-opening a dead one.
func (l *Libvirt) current(forceReopen bool) (*libvirt.Connect, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil && !forceReopen {
		if alive, err := l.conn.IsAlive(); err == nil && alive {
			return l.conn, nil
		}
	}
	// Never drop the test driver's connection: its state lives only as
	// long as some connection in the process holds it.
	if l.conn != nil && l.test && !forceReopen {
		return l.conn, nil
	}
	if l.conn != nil {
		l.log.Warn("libvirt connection lost, reconnecting", "uri", l.uri)
		_, _ = l.conn.Close()
		l.conn = nil
	}
	c, err := l.dial()
	if err != nil {
		return nil, err
	}
	l.conn = c
	return c, nil
}

// do runs fn on the connection, re-opening it once and retrying when the
// local connection itself broke. An error that merely reads like a
// connection error (one relayed from another libvirtd, say) while the
// local connection still answers is returned as it is: fn is re-run only
// when it cannot have reached libvirt's side in full. Work that must not
// run twice uses doOnce.
func (l *Libvirt) do(ctx context.Context, fn func(c *libvirt.Connect) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := l.current(false)
	if err != nil {
		return err
	}
	err = fn(c)
	if err == nil || !isConnError(err) || l.test || connAlive(c) {
		return mapErr(err)
	}
	c, rerr := l.current(true)
	if rerr != nil {
		return rerr
	}
	err = fn(c)
	if err != nil && isConnError(err) {
		return api.Errorf(api.CodeUnavailable, "libvirt %s: %v", l.uri, err)
	}
	return mapErr(err)
}

// doOnce runs fn on the connection exactly once, for work that is not
// idempotent (a migration): after an error it never re-runs fn, and it
// reports a lost local connection as such.
func (l *Libvirt) doOnce(ctx context.Context, fn func(c *libvirt.Connect) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := l.current(false)
	if err != nil {
		return err
	}
	err = fn(c)
	if err != nil && isConnError(err) && !l.test && !connAlive(c) {
		return api.Errorf(api.CodeUnavailable, "libvirt %s: the connection was lost during the operation (not retried): %v", l.uri, err)
	}
	return mapErr(err)
}

// connAlive reports whether the local connection still answers a cheap
// call.
func connAlive(c *libvirt.Connect) bool {
	if alive, err := c.IsAlive(); err != nil || !alive {
		return false
	}
	_, err := c.GetLibVersion()
	return err == nil
}

func lvErr(err error) (libvirt.Error, bool) {
	var e libvirt.Error
	if errors.As(err, &e) {
		return e, true
	}
	return e, false
}

func isConnError(err error) bool {
	e, ok := lvErr(err)
	if !ok {
		return false
	}
	switch e.Code {
	case libvirt.ERR_NO_CONNECT, libvirt.ERR_INVALID_CONN, libvirt.ERR_RPC,
		libvirt.ERR_SYSTEM_ERROR, libvirt.ERR_INTERNAL_ERROR, libvirt.ERR_AUTH_FAILED:
		// INTERNAL/SYSTEM are also used for real failures; only treat
		// them as connection loss when the message says so.
		if e.Code == libvirt.ERR_INTERNAL_ERROR || e.Code == libvirt.ERR_SYSTEM_ERROR {
			m := strings.ToLower(e.Message)
			return strings.Contains(m, "connection") || strings.Contains(m, "client socket") ||
				strings.Contains(m, "broken pipe") || strings.Contains(m, "end of file")
		}
		return true
	}
	return false
}

// isCode reports whether err is the libvirt error code.
func isCode(err error, codes ...libvirt.ErrorNumber) bool {
	e, ok := lvErr(err)
	if !ok {
		return false
	}
	for _, c := range codes {
		if e.Code == c {
			return true
		}
	}
	return false
}

// mapErr turns libvirt errors whose code matters to the caller into
// *api.Error values; others pass through unchanged.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return err
	}
	e, ok := lvErr(err)
	if !ok {
		return err
	}
	switch e.Code {
	case libvirt.ERR_NO_DOMAIN, libvirt.ERR_NO_STORAGE_VOL, libvirt.ERR_NO_STORAGE_POOL,
		libvirt.ERR_NO_DOMAIN_SNAPSHOT:
		return api.Errorf(api.CodeNotFound, "%s", e.Message)
	case libvirt.ERR_NO_SUPPORT, libvirt.ERR_ARGUMENT_UNSUPPORTED:
		return api.Errorf(api.CodeUnsupported, "%s", e.Message)
	case libvirt.ERR_NO_CONNECT, libvirt.ERR_INVALID_CONN:
		return api.Errorf(api.CodeUnavailable, "%s", e.Message)
	case libvirt.ERR_OPERATION_INVALID:
		return api.Errorf(api.CodeConflict, "%s", e.Message)
	}
	return err
}

// wrap adds context to an error while keeping api codes visible.
func wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	err = mapErr(err)
	var ae *api.Error
	if errors.As(err, &ae) {
		return &api.Error{Code: ae.Code, Message: fmt.Sprintf(format, args...) + ": " + ae.Message}
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
