// Package vswitch is kvm-hostd's Open vSwitch driver: it realizes networks
// as OVS bridges (with VXLAN/Geneve tunnels to peer hosts) and records VM
// ports, speaking the OVSDB protocol through libovsdb typed models.
//
// Every row it creates carries external_ids:kvm-hostd-owned=true, and only
// such rows are ever changed or deleted, so it coexists with bridges and
// ports managed by anything else on the host.
package vswitch

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-logr/logr"
	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var _ service.Switch = (*OVS)(nil)

// EndpointEmbedded selects the in-process, in-memory OVSDB server.
const EndpointEmbedded = "embedded"

// Datapath types of a bridge.
const (
	DatapathAuto   = ""
	DatapathSystem = "system" // kernel module
	DatapathNetdev = "netdev" // userspace; works without the kernel module
)

// external_ids keys written by kvm-hostd.
const (
	keyOwned   = "kvm-hostd-owned"
	keyNetwork = "kvm-network"
	keyVLAN    = "kvm-vlan"
	keyOverlay = "kvm-overlay"
	keyVNI     = "kvm-vni"
	keyMTU     = "kvm-mtu"
	keyPeer    = "kvm-peer"
	keyVM      = "vm-id"
	keyMAC     = "attached-mac"
	keyIfaceID = "iface-id"
	keyIndex   = "kvm-iface-index"
	// subnet, DHCP and uplink of a network (on its bridge)
	keySubnet  = "kvm-subnet"
	keyGateway = "kvm-gateway"
	keyDNS     = "kvm-dns"
	keyDHCPIP  = "kvm-dhcp-server-ip"
	keyUplink  = "kvm-uplink"
	// keyPortSecurity is "false" on a network without port security and
	// "true" otherwise; a bridge made before it existed has none (= true).
	keyPortSecurity = "kvm-port-security"
	// keyRole marks the ports a network needs besides VM ports and tunnels
	keyRole = "kvm-role"
)

// Values of keyRole.
const (
	roleDHCP        = "dhcp"         // the DHCP server's internal port
	roleUplinkPatch = "uplink-patch" // a patch port towards/from an uplink bridge
	roleUplink      = "uplink"       // the host interface on an uplink bridge
)

// Option tunes Open.
type Option func(*options)

type options struct {
	datapath string
}

// WithDatapath forces the datapath_type of new bridges ("system" or
// "netdev"). The default (auto) uses netdev when the openvswitch kernel
// module is not loaded, and falls back to netdev when ovs-vswitchd reports
// that a system bridge could not be created.
func WithDatapath(dp string) Option { return func(o *options) { o.datapath = dp } }

// OVS is a service.Switch backed by an OVSDB server.
type OVS struct {
	log      *slog.Logger
	client   client.Client
	embedded *embeddedServer

	// mu serialises mutations so that each call computes its transaction
	// from a cache no other call of ours is about to change.
	mu sync.Mutex
	// datapath is the datapath_type for new bridges; autoDP says it was
	// guessed and may be corrected to netdev by what vswitchd reports.
	dpMu     sync.Mutex
	datapath string
	autoDP   bool

	closeOnce sync.Once

	// txns counts committed transactions; tests use it to prove that a
	// repeated call sends none.
	txns atomic.Int64

	// rundir is ovs-vswitchd's run directory (where <bridge>.mgmt is),
	// taken from the OVSDB unix socket's; "" over tcp (see ofTarget).
	rundir string
	// ofMu serialises port-security dumps and rewrites per switch, so two
	// reconciles cannot interleave a dump with the other's bundle.
	ofMu sync.Mutex
	// ofApplies counts port-security bundles sent; tests use it to prove
	// that a converged bridge is left alone.
	ofApplies atomic.Int64
	// watchFn is told about port changes (see WatchPorts); watched is the
	// cache it is registered on.
	watchMu sync.Mutex
	watchFn func()
	watched *cache.TableCache
}

// Open connects to the OVSDB server at endpoint ("embedded",
// "unix:/path/db.sock" or "tcp:host:port") and keeps a cache of the
// Open_vSwitch, Bridge, Port and Interface tables. A dropped connection is
// re-established in the background; calls meanwhile wait (bounded by their
// context) or report api.CodeUnavailable.
func Open(ctx context.Context, endpoint string, log *slog.Logger, opts ...Option) (*OVS, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	switch o.datapath {
	case DatapathAuto, DatapathSystem, DatapathNetdev:
	default:
		return nil, api.Errorf(api.CodeInvalid, "unknown datapath type %q", o.datapath)
	}
	// libovsdb is chatty at its debug levels; keep it a notch below ours.
	lg := logr.FromSlogHandler(log.With("component", "libovsdb").Handler()).V(1)

	s := &OVS{log: log, datapath: o.datapath}
	switch {
	case endpoint == EndpointEmbedded:
		e, err := startEmbedded(lg)
		if err != nil {
			return nil, err
		}
		s.embedded = e
		endpoint = e.endpoint()
		// Nothing realizes bridges in embedded mode; netdev is what a
		// machine without the kernel module would need.
		if s.datapath == DatapathAuto {
			s.datapath = DatapathNetdev
		}
	case strings.HasPrefix(endpoint, "unix:"):
		s.rundir = filepath.Dir(strings.TrimPrefix(endpoint, "unix:"))
	case strings.HasPrefix(endpoint, "tcp:"):
	default:
		return nil, api.Errorf(api.CodeInvalid, "ovsdb endpoint %q: want embedded, unix:PATH or tcp:HOST:PORT", endpoint)
	}
	if s.datapath == DatapathAuto {
		s.autoDP = true
		s.datapath = DatapathNetdev
		if _, err := os.Stat("/sys/module/openvswitch"); err == nil {
			s.datapath = DatapathSystem
		}
	}

	if err := s.connect(ctx, endpoint, lg); err != nil {
		s.Close()
		return nil, err
	}
	log.Info("connected to ovsdb", "endpoint", endpoint, "datapath", s.datapath, "auto", s.autoDP)
	return s, nil
}

func (s *OVS) connect(ctx context.Context, endpoint string, lg logr.Logger) error {
	cm, err := clientModel()
	if err != nil {
		return err
	}
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 5 * time.Second
	// libovsdb panics when the backoff gives up: never give up.
	bo.MaxElapsedTime = 0
	c, err := client.NewOVSDBClient(cm,
		client.WithEndpoint(endpoint),
		client.WithReconnect(5*time.Second, bo),
		client.WithLogger(&lg),
	)
	if err != nil {
		return err
	}
	if err := c.Connect(ctx); err != nil {
		return api.Errorf(api.CodeUnavailable, "ovsdb %s: %v", endpoint, err)
	}
	s.client = c
	ovsRow, br, port, iface := &OpenvSwitch{}, &Bridge{}, &Port{}, &Interface{}
	if _, err := c.Monitor(ctx, c.NewMonitor(
		client.WithTable(ovsRow, modelColumns(ovsRow)...),
		client.WithTable(br, modelColumns(br)...),
		client.WithTable(port, modelColumns(port)...),
		client.WithTable(iface, modelColumns(iface)...),
	)); err != nil {
		return api.Errorf(api.CodeUnavailable, "ovsdb %s: monitor: %v", endpoint, err)
	}
	root, err := s.root(ctx)
	if err == nil || s.embedded == nil {
		_ = root
		return err
	}
	// The embedded database starts empty; create the root row the way
	// ovs-vsctl init does.
	ops, err := c.Create(&OpenvSwitch{UUID: "root"})
	if err != nil {
		return err
	}
	_, err = s.transact(ctx, ops)
	return err
}

// modelColumns returns pointers to m's column fields (all but _uuid), so a
// monitor asks for exactly the columns the model has. With no fields
// libovsdb monitors every column of the server's schema, and an update that
// touches a column the model lacks (Interface statistics, which
// ovs-vswitchd refreshes every 5 s) fails with "column not found": libovsdb
// logs it and drops the rest of that update, leaving the cache stale.
func modelColumns(m model.Model) []any {
	v := reflect.ValueOf(m).Elem()
	var fields []any
	for i := range v.NumField() {
		if tag := v.Type().Field(i).Tag.Get("ovsdb"); tag != "" && tag != "_uuid" {
			fields = append(fields, v.Field(i).Addr().Interface())
		}
	}
	return fields
}

// root returns the single Open_vSwitch row.
func (s *OVS) root(ctx context.Context) (*OpenvSwitch, error) {
	var rows []OpenvSwitch
	if err := s.client.List(ctx, &rows); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, api.Errorf(api.CodeUnavailable, "ovsdb has no Open_vSwitch row (run ovs-vsctl init)")
	}
	return &rows[0], nil
}

// Ping sends an OVSDB echo; libovsdb reconnects in the background, so a
// failure here just reports the switch unavailable.
func (s *OVS) Ping(ctx context.Context) error {
	if !s.client.Connected() {
		return api.Errorf(api.CodeUnavailable, "ovsdb not connected")
	}
	if err := s.client.Echo(ctx); err != nil {
		return api.Errorf(api.CodeUnavailable, "ovsdb echo: %v", err)
	}
	return nil
}

// Embedded reports whether this is the in-memory OVSDB of --ovsdb
// embedded, where nothing turns rows into devices.
func (s *OVS) Embedded() bool { return s.embedded != nil }

// Close disconnects and stops the embedded server, if any.
func (s *OVS) Close() error {
	s.closeOnce.Do(func() {
		if s.client != nil {
			s.client.Close()
		}
		if s.embedded != nil {
			s.embedded.close()
		}
	})
	return nil
}

// connected guards cache reads: while reconnecting the cache may be stale.
func (s *OVS) connected() error {
	if !s.client.Connected() {
		return api.Errorf(api.CodeUnavailable, "ovsdb not connected")
	}
	return nil
}

// transact runs ops as one OVSDB transaction and maps failures to API
// error codes. An empty ops list is a no-op (nothing to converge).
func (s *OVS) transact(ctx context.Context, ops []ovsdb.Operation) ([]ovsdb.OperationResult, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	res, err := s.client.Transact(ctx, ops...)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "ovsdb transact: %v", err)
	}
	opErrs, err := ovsdb.CheckOperationResults(res, ops)
	if err != nil {
		msgs := []string{err.Error()}
		code := api.CodeInternal
		for _, e := range opErrs {
			msgs = append(msgs, e.Error())
			var cv *ovsdb.ConstraintViolation
			if errors.As(e, &cv) {
				// e.g. a duplicate name someone else inserted meanwhile
				code = api.CodeConflict
			}
		}
		return nil, api.Errorf(code, "ovsdb transaction: %s", strings.Join(msgs, "; "))
	}
	s.txns.Add(1)
	s.awaitCache(ctx, ops, res)
	return res, nil
}

// awaitCache waits (briefly) until the monitor update of a committed
// transaction has reached the cache, so reads right after a write see it.
// ovsdb-server normally sends the update before the reply, which libovsdb
// processes in order; this covers servers that do not.
func (s *OVS) awaitCache(ctx context.Context, ops []ovsdb.Operation, res []ovsdb.OperationResult) {
	var table, uuid string
	for i, op := range ops {
		if op.Op == ovsdb.OperationInsert && i < len(res) {
			table, uuid = op.Table, res[i].UUID.GoUUID
			break
		}
	}
	if uuid == "" {
		return
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if s.client.Cache().Table(table).Row(uuid) != nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// owned reports whether external_ids mark a row as kvm-hostd's.
func owned(ext map[string]string) bool { return ext[keyOwned] == "true" }

func errNotFound(format string, args ...any) error {
	return api.Errorf(api.CodeNotFound, format, args...)
}
