// Package server is kvm-hostd's HTTP layer: routing, authentication,
// request ids, logs, audit and metrics around backend/service.
package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvmfleet/terraform-provider-kvm/backend/reqtrace"
	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Options configure the HTTP server.
type Options struct {
	// Token is the bearer token required under /v1; empty disables token
	// auth (only allowed together with client-certificate auth).
	Token string
	// ReadToken, when set, is a second bearer token that may only read:
	// every GET under /v1 is allowed with it, every write is 403. It is
	// what a CI plan check runs with.
	ReadToken string
	// BodyReadTimeout bounds how long a client may take to send a request
	// body (default 60 s), so slow senders cannot hold connections.
	BodyReadTimeout time.Duration
	// Audit receives one line per mutating request; nil disables it.
	Audit *AuditLog
	Log   *slog.Logger
}

// Server serves the kvm-hostd API.
type Server struct {
	svc     *service.Service
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics
	// table lists every authenticated route with its access rule, for the
	// tests that check each route against each credential.
	table []route
}

// route is one authenticated API route and who may call it.
type route struct {
	method, pattern string
	// fullTokenOnly: the read-only token is refused even though the method
	// is a read. For reads no plan needs that copy bulk data off the host
	// (a volume's bytes): the read token is handed to CI, and must not be
	// a way to take a disk image away. Such reads are audited like writes.
	fullTokenOnly bool
}

// routeOption refines a route's access rule.
type routeOption func(*route)

// fullToken marks a read that needs the full token; see route.fullTokenOnly.
func fullToken(r *route) { r.fullTokenOnly = true }

// New builds the handler tree.
func New(svc *service.Service, opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.BodyReadTimeout <= 0 {
		opts.BodyReadTimeout = time.Minute
	}
	s := &Server{svc: svc, opts: opts, log: opts.Log, mux: http.NewServeMux()}
	s.metrics = newMetrics(svc)
	if opts.Audit != nil {
		audit := opts.Audit
		svc.OnOperationDone(func(op api.Operation) {
			e := AuditEntry{Time: op.EndedAt, Who: "operation", Method: "OPERATION", Path: op.Kind + " " + op.Target,
				Status: http.StatusOK, DurationMS: op.EndedAt.Sub(op.StartedAt).Milliseconds(),
				Params: map[string]string{"operation_id": op.ID, "state": string(op.State)}}
			if op.Error != nil {
				e.Status, e.Error = api.StatusForCode(op.Error.Code), op.Error.Code
				e.Params["message"] = op.Message
			}
			audit.Write(e)
		})
	}
	s.routes()
	return s
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /healthz", s.healthz)
	m.Handle("GET /metrics", s.metrics.handler())

	v1 := func(pattern string, h handlerFunc, opts ...routeOption) {
		method, path, _ := strings.Cut(pattern, " ")
		rt := route{method: method, pattern: "/" + api.Version + path}
		for _, o := range opts {
			o(&rt)
		}
		s.table = append(s.table, rt)
		m.Handle(method+" "+rt.pattern, s.authenticated(rt, s.wrap(h)))
	}
	v1("GET /host", s.getHost)
	v1("PUT /host/maintenance", s.putMaintenance)

	v1("GET /pools/{pool}/volumes", s.listVolumes)
	v1("GET /pools/{pool}/volumes/{name}", s.getVolume)
	v1("PUT /pools/{pool}/volumes/{name}", s.putVolume)
	v1("PATCH /pools/{pool}/volumes/{name}", s.patchVolume)
	v1("DELETE /pools/{pool}/volumes/{name}", s.deleteVolume)
	v1("POST /pools/{pool}/volumes/{name}/copy", s.copyVolume)
	v1("GET /pools/{pool}/volumes/{name}/content", s.volumeContent, fullToken) // raw bytes, streamed

	v1("GET /vms", s.listVMs)
	v1("GET /vms/{name}", s.getVM)
	v1("PUT /vms/{name}", s.putVM)
	v1("PATCH /vms/{name}", s.patchVM)
	v1("DELETE /vms/{name}", s.deleteVM)
	v1("POST /vms/{name}/migrate", s.migrateVM)
	v1("POST /vms/{name}/power", s.powerVM)
	v1("GET /vms/{name}/console", s.vmConsole) // text/plain unless JSON is asked for

	v1("GET /reservations", s.listReservations)
	v1("PUT /reservations/{vm}", s.putReservation)
	v1("DELETE /reservations/{vm}", s.deleteReservation)

	v1("GET /vms/{vm}/snapshots", s.listSnapshots)
	v1("GET /vms/{vm}/snapshots/{name}", s.getSnapshot)
	v1("PUT /vms/{vm}/snapshots/{name}", s.putSnapshot)
	v1("DELETE /vms/{vm}/snapshots/{name}", s.deleteSnapshot)
	v1("POST /vms/{vm}/snapshots/{name}/revert", s.revertSnapshot)

	v1("GET /networks", s.listNetworks)
	v1("GET /networks/{name}", s.getNetwork)
	v1("PUT /networks/{name}", s.putNetwork)
	v1("DELETE /networks/{name}", s.deleteNetwork)

	v1("GET /operations/{id}", s.getOperation)

	// Everything else is a JSON 404. Under /v1 it is authenticated first,
	// whatever the method (OPTIONS, a method no route has, a path no route
	// has): without a valid token every /v1 request is a 401, so a probe
	// cannot map routes and methods, and nothing under /v1 is reachable
	// around the token check. (A "GET" pattern also serves HEAD, which
	// goes through the same authenticated handler as GET.)
	noRoute := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "no route for %s %s", methodLabel(r.Method), r.URL.Path))
	}
	m.Handle("/"+api.Version+"/", s.authenticated(route{}, http.HandlerFunc(noRoute)))
	m.HandleFunc("/", noRoute)
}

// ServeHTTP adds the request id, logging and metrics to every request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rid := r.Header.Get(api.HeaderRequestID)
	if rid == "" || len(rid) > 128 {
		rid = newRequestID()
	}
	w.Header().Set(api.HeaderRequestID, rid)
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	cl := &caller{}
	ctx := context.WithValue(r.Context(), requestIDKey{}, rid)
	ctx = context.WithValue(ctx, callerKey{}, cl)
	ctx, trace := reqtrace.New(ctx)
	r = r.WithContext(ctx)
	s.mux.ServeHTTP(rec, r)
	_, pattern := s.mux.Handler(r)
	if pattern == "" {
		pattern = "unmatched"
	}
	d := time.Since(start)
	s.metrics.observe(pattern, methodLabel(r.Method), rec.status, d)
	if phases := trace.ServerTiming(); phases != "" {
		// Where the time went (see reqtrace), for finding what a slow
		// apply waits on.
		s.log.Info("request", "request_id", rid, "method", methodLabel(r.Method), "path", r.URL.Path, "status", rec.status, "duration_ms", d.Milliseconds(), "phases", phases, "remote", r.RemoteAddr)
	} else {
		s.log.Info("request", "request_id", rid, "method", methodLabel(r.Method), "path", r.URL.Path, "status", rec.status, "duration_ms", d.Milliseconds(), "remote", r.RemoteAddr)
	}
	if s.opts.Audit != nil && (!isRead(r.Method) || cl.sensitive || isConsoleRead(r)) && strings.HasPrefix(r.URL.Path, "/"+api.Version+"/") {
		s.opts.Audit.Write(AuditEntry{
			Time: start.UTC(), RequestID: rid, Who: who(r, cl), Owner: boundedOwner(r.Header.Get(api.HeaderOwner)),
			Method: methodLabel(r.Method), Path: r.URL.Path, Status: rec.status, Error: rec.errCode, DurationMS: d.Milliseconds(),
			Params: cl.params,
		})
	}
}

// Audited: every request under /v1 that is not a plain read (writes, and
// also OPTIONS or unknown methods, which are refused: an attempt is worth
// a line), reads of full-token routes (a volume's bytes: a whole disk
// leaving the host), and reads of a VM's serial console (what a guest
// printed may include secrets). HEAD counts as the GET it mirrors.

// isConsoleRead is a read of a VM's serial console.
func isConsoleRead(r *http.Request) bool {
	return isRead(r.Method) && strings.HasPrefix(r.URL.Path, "/"+api.Version+"/vms/") && strings.HasSuffix(r.URL.Path, "/console")
}

// who names the caller for the audit log: the client certificate's subject
// when mTLS is used, else which token was presented ("token", "read-token",
// or "invalid-token" for a wrong one).
func who(r *http.Request, cl *caller) string {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return "cert:" + r.TLS.PeerCertificates[0].Subject.CommonName
	}
	if cl != nil && cl.who != "" {
		return cl.who
	}
	return "anonymous"
}

// methodLabel bounds the method label of metrics and logs: any string is a
// valid HTTP method token, and one label value per string a client sends
// would let an unauthenticated caller grow /metrics without bound.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// maxOwnerLen bounds the X-Kvm-Owner header where it is recorded.
const maxOwnerLen = 256

func boundedOwner(o string) string {
	if len(o) > maxOwnerLen {
		return o[:maxOwnerLen] + "…"
	}
	return o
}

type requestIDKey struct{}

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(requestIDKey{}).(string)
	return s
}

// authenticated requires a bearer token (constant-time compare): the full
// token for everything, or the read-only token for reads (GET and HEAD) of
// routes not marked fullTokenOnly. When the server runs with
// client-certificate auth, TLS has verified the peer before we get here.
func (s *Server) authenticated(rt route, next http.Handler) http.Handler {
	full, read := []byte(s.opts.Token), []byte(s.opts.ReadToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rt.fullTokenOnly {
			// Set before the token check so refused attempts are audited too.
			if c, ok := r.Context().Value(callerKey{}).(*caller); ok {
				c.sensitive = true
			}
		}
		if len(full) == 0 && len(read) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case ok && len(full) > 0 && subtle.ConstantTimeCompare([]byte(got), full) == 1:
			setCaller(r, "token")
		case ok && len(read) > 0 && subtle.ConstantTimeCompare([]byte(got), read) == 1:
			setCaller(r, "read-token")
			if !isRead(r.Method) {
				writeError(w, api.Errorf(api.CodeForbidden, "the read-only token may not %s %s", methodLabel(r.Method), r.URL.Path))
				return
			}
			if rt.fullTokenOnly {
				writeError(w, api.Errorf(api.CodeForbidden, "the read-only token may not read %s: this route copies bulk data off the host and needs the full token", r.URL.Path))
				return
			}
		default:
			if ok {
				setCaller(r, "invalid-token")
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="kvm-hostd"`)
			writeError(w, api.Errorf(api.CodeUnauthorized, "missing or invalid bearer token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func isRead(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// caller is filled in by authenticated so that the audit line written
// after the request says which credential was used (or that a wrong one
// was presented), without re-checking the token; handlers add the
// parameters worth auditing.
type caller struct {
	who    string
	params map[string]string
	// sensitive: the route needs the full token even for reads, and every
	// request to it is audited.
	sensitive bool
}

// auditParam records a request parameter for the audit line. URLs must be
// redacted by the caller (api.RedactURL).
func auditParam(r *http.Request, key, value string) {
	if value == "" {
		return
	}
	if c, ok := r.Context().Value(callerKey{}).(*caller); ok {
		if c.params == nil {
			c.params = map[string]string{}
		}
		c.params[key] = value
	}
}

type callerKey struct{}

func setCaller(r *http.Request, who string) {
	if c, ok := r.Context().Value(callerKey{}).(*caller); ok {
		c.who = who
	}
}

// handlerFunc returns (status, body) or an error; wrap turns that into JSON.
type handlerFunc func(r *http.Request) (int, any, error)

func (s *Server) wrap(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			// A deadline for the body only: decode clears it once the body
			// is read, so long work after that (a graceful restart, a
			// streamed volume) is not cut short by it.
			rc := http.NewResponseController(w)
			if rc.SetReadDeadline(time.Now().Add(s.opts.BodyReadTimeout)) == nil {
				r = r.WithContext(context.WithValue(r.Context(), bodyReadKey{}, func() { _ = rc.SetReadDeadline(time.Time{}) }))
			}
		}
		status, body, err := h(r)
		if st := reqtrace.From(r.Context()).ServerTiming(); st != "" {
			w.Header().Set("Server-Timing", st)
		}
		if stream, ok := body.(streamResponse); ok && err == nil {
			stream(w)
			return
		}
		if err != nil {
			if e := toError(err); e.Code == api.CodeInternal {
				s.log.Error("internal error", "request_id", requestID(r.Context()), "error", err)
			}
			writeError(w, err)
			return
		}
		writeJSON(w, status, body)
	})
}

// streamResponse is a handler result that writes the response itself
// (volume content), instead of a JSON body.
type streamResponse func(w http.ResponseWriter)

func writeJSON(w http.ResponseWriter, status int, body any) {
	if body == nil {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func toError(err error) *api.Error {
	var e *api.Error
	if errors.As(err, &e) {
		// Keep the context outer layers wrapped around the driver's error,
		// without repeating the code in the message.
		return &api.Error{Code: e.Code, Message: strings.Replace(err.Error(), e.Code+": ", "", 1)}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
	}
	return &api.Error{Code: api.CodeInternal, Message: err.Error()}
}

func writeError(w http.ResponseWriter, err error) {
	e := toError(err)
	if rec, ok := w.(*statusRecorder); ok {
		rec.errCode = e.Code
	}
	writeJSON(w, api.StatusForCode(e.Code), e)
}

type statusRecorder struct {
	http.ResponseWriter
	status  int
	errCode string
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type bodyReadKey struct{}

// bodyRead clears the body read deadline set by wrap.
func bodyRead(r *http.Request) {
	if clear, ok := r.Context().Value(bodyReadKey{}).(func()); ok {
		clear()
	}
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	h := api.Health{Status: "ok", Name: s.svc.Name(), Version: s.svc.Version()}
	if err := s.svc.Healthy(r.Context()); err != nil {
		h.Status = "unhealthy: " + err.Error()
		writeJSON(w, http.StatusServiceUnavailable, h)
		return
	}
	writeJSON(w, http.StatusOK, h)
}

type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(svc *service.Service) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvm_hostd_http_requests_total", Help: "HTTP requests by route, method and status.",
	}, []string{"route", "method", "status"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "kvm_hostd_http_request_duration_seconds", Help: "HTTP request latency by route.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
	}, []string{"route", "method"})
	m.reg.MustRegister(m.requests, m.duration, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(newInventoryCollector(svc))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) observe(route, method string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}
