package server

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"unicode"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// maxBody bounds request bodies; cloud-init user data is the largest part.
const maxBody = 4 << 20

func decode(r *http.Request, v any) error {
	defer bodyRead(r)
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if err == io.EOF {
			return api.Errorf(api.CodeInvalid, "request body is empty; expected JSON")
		}
		return api.Errorf(api.CodeInvalid, "invalid JSON body: %v", err)
	}
	// One JSON value per body: trailing data is a malformed request, not
	// something to ignore.
	if _, err := dec.Token(); err != io.EOF {
		return api.Errorf(api.CodeInvalid, "invalid JSON body: unexpected data after the JSON value")
	}
	return nil
}

func redactedURL(s string) string {
	if s == "" {
		return ""
	}
	return api.RedactURL(s)
}

// redactVolume drops what a volume's source_url may carry as credentials
// (user info, a signed query) before it leaves the host.
func redactVolume(v *api.Volume) {
	if v != nil && v.SourceURL != "" {
		v.SourceURL = api.RedactURL(v.SourceURL)
	}
}

func createdStatus(created bool) int {
	if created {
		return http.StatusCreated
	}
	return http.StatusOK
}

func (s *Server) getHost(r *http.Request) (int, any, error) {
	return http.StatusOK, s.svc.Host(r.Context()), nil
}

func (s *Server) putMaintenance(r *http.Request) (int, any, error) {
	var m api.Maintenance
	if err := decode(r, &m); err != nil {
		return 0, nil, err
	}
	auditParam(r, "enabled", strconv.FormatBool(m.Enabled))
	if m.Reason != "" {
		auditParam(r, "reason", m.Reason)
	}
	out, err := s.svc.SetMaintenance(m)
	return http.StatusOK, out, err
}

func (s *Server) listVolumes(r *http.Request) (int, any, error) {
	vs, err := s.svc.ListVolumes(r.Context(), r.PathValue("pool"))
	if vs == nil {
		vs = []api.Volume{}
	}
	for i := range vs {
		redactVolume(&vs[i])
	}
	return http.StatusOK, api.VolumeList{Volumes: vs}, err
}

func (s *Server) getVolume(r *http.Request) (int, any, error) {
	// used_by and children need a scan of the pool and every domain;
	// ?usage=false skips it for plain reads.
	usage := r.URL.Query().Get("usage") != "false"
	v, err := s.svc.GetVolume(r.Context(), r.PathValue("pool"), r.PathValue("name"), usage)
	redactVolume(v)
	return http.StatusOK, v, err
}

func (s *Server) putVolume(r *http.Request) (int, any, error) {
	var spec api.VolumeSpec
	if err := decode(r, &spec); err != nil {
		return 0, nil, err
	}
	auditParam(r, "source_url", redactedURL(spec.SourceURL))
	auditParam(r, "base_volume", spec.BaseVolume)
	v, created, err := s.svc.PutVolume(r.Context(), r.PathValue("pool"), r.PathValue("name"), spec)
	if err != nil {
		return 0, nil, err
	}
	redactVolume(v)
	if v.Operation != nil && v.Operation.State == api.OpRunning {
		return http.StatusAccepted, v, nil
	}
	return createdStatus(created), v, nil
}

func (s *Server) patchVolume(r *http.Request) (int, any, error) {
	var u api.VolumeUpdate
	if err := decode(r, &u); err != nil {
		return 0, nil, err
	}
	v, err := s.svc.UpdateVolume(r.Context(), r.PathValue("pool"), r.PathValue("name"), u)
	redactVolume(v)
	return http.StatusOK, v, err
}

func (s *Server) deleteVolume(r *http.Request) (int, any, error) {
	return http.StatusNoContent, nil, s.svc.DeleteVolume(r.Context(), r.PathValue("pool"), r.PathValue("name"))
}

func (s *Server) copyVolume(r *http.Request) (int, any, error) {
	var req api.VolumeCopyRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	auditParam(r, "content_url", redactedURL(req.ContentURL))
	op, err := s.svc.CopyVolume(r.Context(), r.PathValue("pool"), r.PathValue("name"), req, r.Header.Get(api.HeaderIdempotencyKey))
	return http.StatusAccepted, op, err
}

// volumeContent streams a volume's bytes (application/octet-stream). Errors
// found before the first byte are JSON like everywhere else; an error in
// the middle of the stream aborts the connection, so the reader sees a
// truncated chunked body rather than a short "successful" one.
func (s *Server) volumeContent(r *http.Request) (int, any, error) {
	return 0, streamResponse(func(w http.ResponseWriter) {
		sw := &streamWriter{w: w}
		_, err := s.svc.ReadVolumeContent(r.Context(), r.PathValue("pool"), r.PathValue("name"), sw)
		if err != nil {
			if !sw.started {
				if e := toError(err); e.Code == api.CodeInternal {
					s.log.Error("internal error", "request_id", requestID(r.Context()), "error", err)
				}
				writeError(w, err)
				return
			}
			s.log.Error("volume content stream aborted", "request_id", requestID(r.Context()), "error", err)
			panic(http.ErrAbortHandler)
		}
		if !sw.started {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
		}
	}), nil
}

// streamWriter sends the 200 header with the first byte.
type streamWriter struct {
	w       http.ResponseWriter
	started bool
}

func (sw *streamWriter) Write(b []byte) (int, error) {
	if !sw.started {
		sw.started = true
		sw.w.Header().Set("Content-Type", "application/octet-stream")
		sw.w.WriteHeader(http.StatusOK)
	}
	return sw.w.Write(b)
}

func (s *Server) listVMs(r *http.Request) (int, any, error) {
	vms, err := s.svc.ListVMs(r.Context())
	if vms == nil {
		vms = []api.VM{}
	}
	return http.StatusOK, api.VMList{VMs: vms}, err
}

func (s *Server) getVM(r *http.Request) (int, any, error) {
	vm, err := s.svc.GetVM(r.Context(), r.PathValue("name"))
	return http.StatusOK, vm, err
}

// vmConsole answers the tail of a VM's serial log: text/plain (the log
// itself; X-Console-Truncated says whether older output was cut off), or
// api.Console as JSON when the client accepts application/json but not
// text/plain. The log is what the guest wrote, so it is untrusted: raw by
// default (a user debugging a boot wants the bytes), escaped for display
// with ?escape=true (see api.EscapeTerminal).
func (s *Server) vmConsole(r *http.Request) (int, any, error) {
	var max int64
	q := r.URL.Query()
	if v := q.Get("bytes"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return 0, nil, api.Errorf(api.CodeInvalid, "bytes must be a positive integer")
		}
		max = n
	}
	escape := false
	if v := q.Get("escape"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return 0, nil, api.Errorf(api.CodeInvalid, "escape must be true or false")
		}
		escape = b
	}
	c, err := s.svc.Console(r.Context(), r.PathValue("name"), max)
	if err != nil {
		return 0, nil, err
	}
	if escape {
		c.Text, c.Escaped = api.EscapeTerminal([]byte(c.Text)), true
	}
	accept := r.Header.Get("Accept")
	if strings.Contains(accept, "application/json") && !strings.Contains(accept, "text/plain") {
		return http.StatusOK, c, nil
	}
	return 0, streamResponse(func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		// Never rendered as anything but text, whatever the guest wrote.
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Console-Escaped", strconv.FormatBool(c.Escaped))
		w.Header().Set("X-Console-Truncated", strconv.FormatBool(c.Truncated))
		w.Header().Set("Content-Length", strconv.Itoa(len(c.Text)))
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, c.Text)
	}), nil
}

func (s *Server) putVM(r *http.Request) (int, any, error) {
	var spec api.VMSpec
	if err := decode(r, &spec); err != nil {
		return 0, nil, err
	}
	owner := r.Header.Get(api.HeaderOwner)
	if len(owner) > maxOwnerLen || strings.ContainsFunc(owner, unicode.IsControl) {
		return 0, nil, api.Errorf(api.CodeInvalid, "%s must be at most %d printable characters", api.HeaderOwner, maxOwnerLen)
	}
	meta := service.VMMeta{Owner: owner, RequestID: requestID(r.Context())}
	vm, created, err := s.svc.PutVM(r.Context(), r.PathValue("name"), spec, meta)
	if err != nil {
		return 0, nil, err
	}
	return createdStatus(created), vm, nil
}

func (s *Server) patchVM(r *http.Request) (int, any, error) {
	var spec api.VMSpec
	if err := decode(r, &spec); err != nil {
		return 0, nil, err
	}
	vm, err := s.svc.UpdateVM(r.Context(), r.PathValue("name"), spec)
	return http.StatusOK, vm, err
}

func (s *Server) deleteVM(r *http.Request) (int, any, error) {
	timeout := service.DefaultShutdownTimeout
	if q := r.URL.Query().Get("shutdown_timeout"); q != "" {
		n, err := strconv.ParseInt(q, 10, 64)
		if err != nil {
			return 0, nil, api.Errorf(api.CodeInvalid, "shutdown_timeout %q must be 0..%d seconds", q, api.MaxShutdownTimeoutSec)
		}
		if timeout, err = api.Seconds("shutdown_timeout", n, 0, api.MaxShutdownTimeoutSec); err != nil {
			return 0, nil, err
		}
	}
	return http.StatusNoContent, nil, s.svc.DeleteVM(r.Context(), r.PathValue("name"), timeout)
}

func (s *Server) migrateVM(r *http.Request) (int, any, error) {
	var req api.MigrateRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	auditParam(r, "target_uri", redactedURL(req.TargetURI))
	auditParam(r, "target_host", req.TargetHost)
	auditParam(r, "mode", req.Mode)
	op, err := s.svc.MigrateVM(r.Context(), r.PathValue("name"), req, r.Header.Get(api.HeaderIdempotencyKey))
	return http.StatusAccepted, op, err
}

func (s *Server) listReservations(r *http.Request) (int, any, error) {
	return http.StatusOK, api.ReservationList{Reservations: s.svc.ListReservations(r.Context())}, nil
}

func (s *Server) putReservation(r *http.Request) (int, any, error) {
	var spec api.ReservationSpec
	if err := decode(r, &spec); err != nil {
		return 0, nil, err
	}
	res, err := s.svc.PutReservation(r.Context(), r.PathValue("vm"), spec)
	return http.StatusOK, res, err
}

func (s *Server) deleteReservation(r *http.Request) (int, any, error) {
	return http.StatusNoContent, nil, s.svc.DeleteReservation(r.Context(), r.PathValue("vm"))
}

func (s *Server) listSnapshots(r *http.Request) (int, any, error) {
	l, err := s.svc.ListSnapshots(r.Context(), r.PathValue("vm"))
	if l == nil {
		l = []api.Snapshot{}
	}
	return http.StatusOK, api.SnapshotList{Snapshots: l}, err
}

func (s *Server) getSnapshot(r *http.Request) (int, any, error) {
	snap, err := s.svc.GetSnapshot(r.Context(), r.PathValue("vm"), r.PathValue("name"))
	return http.StatusOK, snap, err
}

func (s *Server) putSnapshot(r *http.Request) (int, any, error) {
	var spec api.SnapshotSpec
	if err := decode(r, &spec); err != nil {
		return 0, nil, err
	}
	snap, created, err := s.svc.PutSnapshot(r.Context(), r.PathValue("vm"), r.PathValue("name"), spec)
	if err != nil {
		return 0, nil, err
	}
	return createdStatus(created), snap, nil
}

func (s *Server) revertSnapshot(r *http.Request) (int, any, error) {
	snap, err := s.svc.RevertSnapshot(r.Context(), r.PathValue("vm"), r.PathValue("name"))
	return http.StatusOK, snap, err
}

func (s *Server) deleteSnapshot(r *http.Request) (int, any, error) {
	return http.StatusNoContent, nil, s.svc.DeleteSnapshot(r.Context(), r.PathValue("vm"), r.PathValue("name"))
}

func (s *Server) listNetworks(r *http.Request) (int, any, error) {
	l, err := s.svc.ListNetworks(r.Context())
	if l == nil {
		l = []api.Network{}
	}
	return http.StatusOK, api.NetworkList{Networks: l}, err
}

func (s *Server) getNetwork(r *http.Request) (int, any, error) {
	n, err := s.svc.GetNetwork(r.Context(), r.PathValue("name"))
	return http.StatusOK, n, err
}

func (s *Server) putNetwork(r *http.Request) (int, any, error) {
	var spec api.NetworkSpec
	if err := decode(r, &spec); err != nil {
		return 0, nil, err
	}
	n, err := s.svc.PutNetwork(r.Context(), r.PathValue("name"), spec)
	return http.StatusOK, n, err
}

func (s *Server) deleteNetwork(r *http.Request) (int, any, error) {
	return http.StatusNoContent, nil, s.svc.DeleteNetwork(r.Context(), r.PathValue("name"))
}

func (s *Server) getOperation(r *http.Request) (int, any, error) {
	op, err := s.svc.Operation(r.Context(), r.PathValue("id"))
	return http.StatusOK, op, err
}
