package server

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// AuditEntry is one line of the audit log: who did what, with which
// request id, and how it ended.
type AuditEntry struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id"`
	Who       string    `json:"who"`
	Owner     string    `json:"owner,omitempty"`
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Status    int       `json:"status"`
	Error     string    `json:"error,omitempty"`
	// Params are the request's parameters that say what it touched beyond
	// its path (source URL, migration target), redacted of credentials.
	Params     map[string]string `json:"params,omitempty"`
	DurationMS int64             `json:"duration_ms"`
}

// AuditLog appends JSON lines to a file opened O_APPEND, so concurrent
// writers and log rotation by copy-truncate both stay line-atomic.
type AuditLog struct {
	mu sync.Mutex
	w  io.WriteCloser
}

// OpenAuditLog opens (creating) an append-only audit file.
func OpenAuditLog(path string) (*AuditLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	return &AuditLog{w: f}, nil
}

// Write appends one entry; write errors go to stderr because the request
// has already been served.
func (a *AuditLog) Write(e AuditEntry) {
	b, _ := json.Marshal(e)
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.w.Write(b); err != nil {
		fmt.Fprintf(os.Stderr, "kvm-hostd: audit log write failed: %v\n", err)
	}
}

// Close closes the file.
func (a *AuditLog) Close() error { return a.w.Close() }

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
