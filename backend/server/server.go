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

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Options configure the HTTP server.
type Options struct {
	// Token is the bearer token required under /v1; empty disables token
	// auth (only allowed together with client-certificate auth).
	Token string
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
}

// New builds the handler tree.
func New(svc *service.Service, opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{svc: svc, opts: opts, log: opts.Log, mux: http.NewServeMux()}
	s.metrics = newMetrics(svc)
	s.routes()
	return s
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /healthz", s.healthz)
	m.Handle("GET /metrics", s.metrics.handler())

	v1 := func(pattern string, h handlerFunc) {
		method, path, _ := strings.Cut(pattern, " ")
		m.Handle(method+" /"+api.Version+path, s.authenticated(s.wrap(h)))
	}
	v1("GET /host", s.getHost)

	v1("GET /pools/{pool}/volumes", s.listVolumes)
	v1("GET /pools/{pool}/volumes/{name}", s.getVolume)
	v1("PUT /pools/{pool}/volumes/{name}", s.putVolume)
	v1("PATCH /pools/{pool}/volumes/{name}", s.patchVolume)
	v1("DELETE /pools/{pool}/volumes/{name}", s.deleteVolume)
	v1("POST /pools/{pool}/volumes/{name}/copy", s.copyVolume)
	v1("GET /pools/{pool}/volumes/{name}/content", s.volumeContent) // raw bytes, streamed

	v1("GET /vms", s.listVMs)
	v1("GET /vms/{name}", s.getVM)
	v1("PUT /vms/{name}", s.putVM)
	v1("PATCH /vms/{name}", s.patchVM)
	v1("DELETE /vms/{name}", s.deleteVM)
	v1("POST /vms/{name}/migrate", s.migrateVM)

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

	// Everything else is a JSON 404, also under /v1 without auth, so a
	// probe cannot tell routes from non-routes by the status alone... but
	// callers still get a useful body.
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
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
	ctx := context.WithValue(r.Context(), requestIDKey{}, rid)
	r = r.WithContext(ctx)
	s.mux.ServeHTTP(rec, r)
	_, pattern := s.mux.Handler(r)
	if pattern == "" {
		pattern = "unmatched"
	}
	d := time.Since(start)
	s.metrics.observe(pattern, r.Method, rec.status, d)
	s.log.Info("request", "request_id", rid, "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration_ms", d.Milliseconds(), "remote", r.RemoteAddr)
	if s.opts.Audit != nil && isMutating(r.Method) && strings.HasPrefix(r.URL.Path, "/"+api.Version+"/") {
		s.opts.Audit.Write(AuditEntry{
			Time: start.UTC(), RequestID: rid, Who: who(r), Owner: r.Header.Get(api.HeaderOwner),
			Method: r.Method, Path: r.URL.Path, Status: rec.status, Error: rec.errCode, DurationMS: d.Milliseconds(),
		})
	}
}

func isMutating(m string) bool {
	return m == http.MethodPut || m == http.MethodPost || m == http.MethodPatch || m == http.MethodDelete
}

// who names the caller for the audit log: the client certificate's subject
// when mTLS is used, else the fact that the shared token was presented.
func who(r *http.Request) string {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return "cert:" + r.TLS.PeerCertificates[0].Subject.CommonName
	}
	if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		return "token"
	}
	return "anonymous"
}

type requestIDKey struct{}

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(requestIDKey{}).(string)
	return s
}

// authenticated requires the bearer token (constant-time compare). When the
// server runs with client-certificate auth, TLS has verified the peer
// before we get here.
func (s *Server) authenticated(next http.Handler) http.Handler {
	want := []byte(s.opts.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(want) > 0 {
			h := r.Header.Get("Authorization")
			got, ok := strings.CutPrefix(h, "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="kvm-hostd"`)
				writeError(w, api.Errorf(api.CodeUnauthorized, "missing or invalid bearer token"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// handlerFunc returns (status, body) or an error; wrap turns that into JSON.
type handlerFunc func(r *http.Request) (int, any, error)

func (s *Server) wrap(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, body, err := h(r)
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
