// Package client is the only code that speaks HTTP to kvm-hostd. Resources
// call its methods and never build URLs themselves.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Options configure a Client.
type Options struct {
	// Endpoint is the base URL of one kvm-hostd, e.g. https://10.0.0.11:7443.
	Endpoint string
	Token    string
	// TLS configures HTTPS (CA pool, client certificate); nil uses defaults.
	TLS *tls.Config
	// RetryMax is the number of retries after the first attempt (default 4).
	RetryMax int
	// RetryWaitMin/Max bound the jittered backoff (defaults 200ms / 5s).
	RetryWaitMin, RetryWaitMax time.Duration
	// MaxRetryAfter caps how long a server's Retry-After may make us wait.
	MaxRetryAfter time.Duration
	// Owner is sent with every mutating request and recorded by the host.
	Owner string
	// Logger receives one line per retry; nil discards.
	Logger *slog.Logger
	// HTTPClient overrides the underlying client (tests).
	HTTPClient *http.Client
}

// Client talks to one kvm-hostd.
type Client struct {
	base  *url.URL
	token string
	owner string
	http  *retryablehttp.Client
	// writeGen changes at the start and at the end of every write, and
	// writing counts the writes in flight: a cache of this host's reads
	// (the provider's per-plan snapshot) is valid only while neither moved.
	writeGen atomic.Uint64
	writing  atomic.Int64
}

// WriteState says how many writes this client has started and ended (a
// generation that changes at both) and whether one is in flight. A reader
// that caches answers of this host trusts an answer only when it was read
// at the current generation with no write in flight, so it never serves
// what was read before this client's own write.
func (c *Client) WriteState() (gen uint64, writing bool) {
	gen = c.writeGen.Load()
	return gen, c.writing.Load() > 0
}

// New validates the endpoint and builds a client. It does not contact the host.
func New(opts Options) (*Client, error) {
	u, err := ParseEndpoint(opts.Endpoint)
	if err != nil {
		return nil, err
	}
	rc := retryablehttp.NewClient()
	rc.Logger = nil
	if opts.Logger != nil {
		rc.Logger = retryLogger{opts.Logger}
	}
	rc.RetryMax = 4
	if opts.RetryMax > 0 {
		rc.RetryMax = opts.RetryMax
	}
	rc.RetryWaitMin, rc.RetryWaitMax = 200*time.Millisecond, 5*time.Second
	if opts.RetryWaitMin > 0 {
		rc.RetryWaitMin = opts.RetryWaitMin
	}
	if opts.RetryWaitMax > 0 {
		rc.RetryWaitMax = opts.RetryWaitMax
	}
	maxAfter := opts.MaxRetryAfter
	if maxAfter <= 0 {
		maxAfter = 10 * time.Second
	}
	rc.CheckRetry = CheckRetry
	rc.Backoff = JitterBackoff(maxAfter)
	// Keep the server's {code,message} when retries are exhausted instead
	// of retryablehttp's generic "giving up after N attempts".
	rc.ErrorHandler = retryablehttp.PassthroughErrorHandler
	if opts.HTTPClient != nil {
		rc.HTTPClient = opts.HTTPClient
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		if opts.TLS != nil {
			tr.TLSClientConfig = opts.TLS
		}
		rc.HTTPClient = &http.Client{Transport: tr}
	}
	return &Client{base: u, token: opts.Token, owner: opts.Owner, http: rc}, nil
}

// ParseEndpoint checks that an endpoint is an absolute http(s) URL with a
// host and no path, query or credentials, so mistakes surface at plan time.
func ParseEndpoint(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		return nil, fmt.Errorf("endpoint %q must start with http:// or https:// (e.g. https://10.0.0.11:7443)", s)
	}
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("endpoint %q is not a URL: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("endpoint %q must start with http:// or https://", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("endpoint %q has no host", s)
	}
	if u.User != nil {
		return nil, fmt.Errorf("endpoint %q must not contain credentials; use token", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("endpoint %q must not have a path or query (e.g. https://10.0.0.11:7443)", s)
	}
	u.Path = ""
	return u, nil
}

// Endpoint returns the base URL.
func (c *Client) Endpoint() string { return c.base.String() }

type idempotencyKey struct{}

// WithIdempotencyKey marks a POST as safe to retry: the host deduplicates by
// the key. Without one, a POST is never retried.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, idempotencyKey{}, key)
}

// NewRequestID returns a random id for X-Request-Id.
func NewRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// do sends one logical request (retried as the policy allows) and decodes a
// JSON response into out when out is non-nil.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) (int, error) {
	u := *c.base
	u.Path = "/" + api.Version + path
	u.RawPath = ""
	if query != nil {
		u.RawQuery = query.Encode()
	}
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return 0, fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
	}
	var rb any
	if body != nil {
		rb = body
	}
	if method != http.MethodGet && method != http.MethodHead {
		c.writing.Add(1)
		c.writeGen.Add(1)
		defer func() {
			c.writeGen.Add(1)
			c.writing.Add(-1)
		}()
	}
	key, _ := ctx.Value(idempotencyKey{}).(string)
	ctx = withMethod(ctx, method, key != "")
	req, err := retryablehttp.NewRequestWithContext(ctx, method, u.String(), rb)
	if err != nil {
		return 0, fmt.Errorf("building %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.owner != "" {
		req.Header.Set(api.HeaderOwner, c.owner)
	}
	req.Header.Set(api.HeaderRequestID, NewRequestID())
	if key != "" {
		req.Header.Set(api.HeaderIdempotencyKey, key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s on %s: %w", method, path, c.base.Host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s on %s: reading response: %w", method, path, c.base.Host, err)
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, decodeError(resp.StatusCode, data)
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s on %s: decoding response: %w", method, path, c.base.Host, err)
		}
	}
	return resp.StatusCode, nil
}

func decodeError(status int, data []byte) error {
	e := &api.Error{}
	if err := json.Unmarshal(data, e); err != nil || e.Code == "" {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 512 {
			msg = msg[:512]
		}
		if msg == "" {
			msg = http.StatusText(status)
		}
		e = &api.Error{Code: api.CodeForStatus(status), Message: msg}
	}
	e.Status = status
	return e
}

// StatusOf returns the HTTP status of an error returned by the client, or 0.
func StatusOf(err error) int {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func esc(s string) string { return url.PathEscape(s) }

type retryLogger struct{ l *slog.Logger }

func (r retryLogger) Error(msg string, kv ...any) { r.l.Error(msg, kv...) }
func (r retryLogger) Info(msg string, kv ...any)  { r.l.Debug(msg, kv...) }
func (r retryLogger) Debug(msg string, kv ...any) { r.l.Debug(msg, kv...) }
func (r retryLogger) Warn(msg string, kv ...any)  { r.l.Warn(msg, kv...) }
