package hostd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/netutil"

	"github.com/kvmfleet/terraform-provider-kvm/backend/hypervisor"
	"github.com/kvmfleet/terraform-provider-kvm/backend/server"
	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/backend/vswitch"
)

// Version is set at build time with -ldflags "-X .../backend/hostd.Version=...".
var Version = "dev"

// Main is a running kvm-hostd.
type Main struct {
	Config *Config
	// Stdout receives the "listening on" line that scripts and tests wait for.
	Stdout io.Writer
	Log    *slog.Logger

	hv    *hypervisor.Libvirt
	svc   *service.Service
	sw    service.Switch
	audit *server.AuditLog
	ln    net.Listener
	srv   *http.Server
	url   string
	certs *certReloader // nil without TLS
}

// NewLogger builds the slog logger the flags ask for.
func NewLogger(c *Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if c.LogFormat == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h).With("host", c.Name)
}

// Open connects to libvirt and OVSDB, builds the service and binds the
// listener, so configuration and bind errors surface before serving.
func (m *Main) Open(ctx context.Context) (err error) {
	c := m.Config
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	token, err := readToken("--token-file", c.TokenFile)
	if err != nil {
		return err
	}
	readOnly, err := readToken("--read-token-file", c.ReadTokenFile)
	if err != nil {
		return err
	}
	if readOnly != "" && readOnly == token {
		return errors.New("--read-token-file holds the same token as --token-file")
	}
	if token != "" && c.TLSCert == "" && !c.loopbackOnly() {
		m.Log.Warn("SECURITY: bearer tokens are sent in clear text over plain HTTP on a non-loopback address; use --tls-cert/--tls-key", "listen", c.Listen)
	}
	if c.Unauthenticated() {
		m.Log.Warn("no --token-file or --client-ca: the API is unauthenticated (allowed because --listen is loopback only)", "listen", c.Listen)
	}
	if c.AuditLog != "" {
		if m.audit, err = server.OpenAuditLog(c.AuditLog); err != nil {
			return err
		}
	}
	keys, err := readKeyDir(c.KeyDir)
	if err != nil {
		return err
	}
	if m.hv, err = hypervisor.Open(c.LibvirtURI, m.Log); err != nil {
		return fmt.Errorf("connecting to libvirt at %s: %w", c.LibvirtURI, err)
	}
	m.hv.SetHostName(c.Name)
	m.hv.SetKeys(keys)
	m.hv.SetStateDir(c.StateDir)
	for _, k := range keys {
		clear(k) // SetKeys holds its own copy
	}
	if c.OVSDB != "none" {
		sw, err := vswitch.Open(ctx, c.OVSDB, m.Log)
		if err != nil {
			return fmt.Errorf("connecting to OVSDB at %s: %w", c.OVSDB, err)
		}
		m.sw = sw
	}
	svc, err := service.New(ctx, service.Config{
		Name: c.Name, Version: Version, Labels: c.Labels, TunnelIP: c.TunnelIP,
		CPUOvercommit: c.CPUOvercommit, MemoryOvercommit: c.MemoryOvercommit,
		PoolDir: c.PoolDir, LibvirtURI: c.LibvirtURI, MigrationURI: c.MigrationURI,
		FetchAllow: c.FetchAllow, PCIDevices: c.PCIDevices, Keys: m.hv.KeyNames(),
		Pools: c.Pools, SharedPools: c.SharedPools,
		Maintenance: c.Maintenance, StateDir: c.StateDir,
	}, m.hv, m.sw, m.Log)
	if err != nil {
		return err
	}
	// Disk secrets are ephemeral in libvirtd: register them again, so the
	// VMs start and migrations arrive after a restart of either daemon.
	if err := m.hv.RegisterDiskSecrets(ctx, svc.LocalPools()); err != nil {
		m.Log.Warn("registering disk encryption secrets failed; they are registered again before each VM start", "err", err)
	}
	for _, path := range m.hv.SweepUnfinishedRBD(ctx) {
		m.Log.Warn("deleted an unfinished rbd image left by a previous run", "path", path)
	}
	if len(keys) > 0 {
		m.Log.Info("disk encryption keys loaded", "keys", m.hv.KeyNames(), "key_dir", c.KeyDir)
	}
	m.svc = svc
	// DHCP servers of the networks found in OVSDB, kept in step with the
	// VMs until Close.
	svc.StartDHCP(ctx)
	handler := server.New(svc, server.Options{Token: token, ReadToken: readOnly, Audit: m.audit, Log: m.Log})
	m.srv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 64 << 10}
	scheme := "http"
	if c.TLSCert != "" {
		m.certs = &certReloader{certFile: c.TLSCert, keyFile: c.TLSKey}
		tc, err := serverTLS(c, m.certs)
		if err != nil {
			return err
		}
		m.srv.TLSConfig = tc
		scheme = "https"
	}
	if m.ln, err = net.Listen("tcp", c.Listen); err != nil {
		return fmt.Errorf("listening on %s: %w", c.Listen, err)
	}
	// A cap on open connections: past it, new ones wait in the kernel's
	// accept queue instead of each costing a goroutine and buffers.
	m.ln = netutil.LimitListener(m.ln, maxConns)
	if m.srv.TLSConfig != nil {
		m.ln = tls.NewListener(m.ln, m.srv.TLSConfig)
	}
	m.url = scheme + "://" + m.ln.Addr().String()
	return nil
}

// maxConns bounds concurrently open client connections.
const maxConns = 512

// minTokenLen is the shortest bearer token kvm-hostd accepts.
const minTokenLen = 16

// readToken reads a token file. It refuses a file that others may read or
// write (the token is as good as root on this host) and a token too short
// to resist guessing.
func readToken(flagName, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", flagName, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", flagName, err)
	}
	if perm := st.Mode().Perm(); perm&0o007 != 0 {
		return "", fmt.Errorf("%s %s is accessible by other users (mode %#o); chmod o-rwx it", flagName, path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", flagName, err)
	}
	token := strings.TrimSpace(string(b))
	switch {
	case token == "":
		return "", fmt.Errorf("%s %s is empty", flagName, path)
	case len(token) < minTokenLen:
		return "", fmt.Errorf("%s %s holds a token of %d bytes; use at least %d (e.g. openssl rand -hex 32)", flagName, path, len(token), minTokenLen)
	case strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "", fmt.Errorf("%s %s: the token must be one line without spaces or control characters", flagName, path)
	}
	return token, nil
}

// URL is the base URL the server listens on (after Open).
func (m *Main) URL() string { return m.url }

// Serve serves until the listener is closed by Shutdown.
func (m *Main) Serve() error {
	m.Log.Info("kvm-hostd listening", "url", m.url, "libvirt_uri", m.Config.LibvirtURI, "ovsdb", m.Config.OVSDB,
		"cpu_overcommit", ratio(m.Config.CPUOvercommit), "memory_overcommit", ratio(m.Config.MemoryOvercommit), "version", Version)
	if m.Stdout != nil {
		fmt.Fprintf(m.Stdout, "kvm-hostd %s listening on %s\n", m.Config.Name, m.url)
	}
	if err := m.srv.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown is what SIGTERM does: stop accepting connections, let running
// requests and operations (downloads, copies, migrations) finish until ctx
// is done, then cancel what still runs and give it ShutdownGrace to clean
// up (a cancelled download or copy deletes its partial volume; a cancelled
// migration is aborted and the VM stays on this host).
func (m *Main) Shutdown(ctx context.Context) error {
	if m.srv == nil {
		return nil
	}
	err := m.srv.Shutdown(ctx)
	if m.svc != nil {
		m.svc.Shutdown(ctx, ShutdownGrace)
	}
	return err
}

// Close releases libvirt, OVSDB and the audit log.
func (m *Main) Close() {
	if m.svc != nil {
		m.svc.StopDHCP()
	}
	if m.sw != nil {
		_ = m.sw.Close()
		m.sw = nil
	}
	if m.hv != nil {
		_ = m.hv.Close()
		m.hv = nil
	}
	if m.audit != nil {
		_ = m.audit.Close()
		m.audit = nil
	}
}

// certReloader serves the current certificate to every new handshake, so
// ReloadTLS (SIGHUP) swaps it without dropping open connections.
type certReloader struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

func (r *certReloader) load() error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("loading --tls-cert/--tls-key: %w", err)
	}
	r.cur.Store(&cert)
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.cur.Load(), nil }

// ReloadTLS re-reads --tls-cert and --tls-key (on SIGHUP). New connections
// get the new certificate; open ones keep theirs. On error the old
// certificate stays in use.
func (m *Main) ReloadTLS() error {
	if m.certs == nil {
		return nil
	}
	if err := m.certs.load(); err != nil {
		m.Log.Error("TLS certificate reload failed; keeping the current one", "error", err)
		return err
	}
	m.Log.Info("TLS certificate reloaded", "cert", m.certs.certFile)
	return nil
}

func serverTLS(c *Config, certs *certReloader) (*tls.Config, error) {
	if err := certs.load(); err != nil {
		return nil, err
	}
	tc := &tls.Config{GetCertificate: certs.get, MinVersion: tls.VersionTLS12}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("reading --client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--client-ca %s holds no PEM certificate", c.ClientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
