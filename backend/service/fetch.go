package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Fetcher is kvm-hostd's one way out to the network: an image download
// (source_url) and a host-to-host volume copy (content_url) both go
// through it, so they share one policy:
//   - bounded connect, TLS, response-header and idle (no byte for a while)
//     times, and the caller's context cancels the transfer;
//   - a size cap: the declared Content-Length when there is one, and never
//     more than MaxBytes;
//   - no credentials across a redirect, and only http/https redirects;
//   - URLs in errors carry no user-info or query (redactURL), and a remote
//     body is never copied into an error.
type Fetcher struct {
	// MaxBytes caps one transfer.
	MaxBytes int64
	// IdleTimeout fails a transfer that received no byte for this long.
	IdleTimeout time.Duration
	// CheckAddr, when set, is asked about every address the fetcher is
	// about to connect to (after name resolution, for the first request
	// and for every redirect); an error refuses the connection. It is the
	// hook for the --fetch-allow network allow-list.
	CheckAddr func(network, address string) error

	once   sync.Once
	client *http.Client
}

// Fetch limits when nothing else is configured.
const (
	fetchConnectTimeout = 15 * time.Second
	fetchHeaderTimeout  = 60 * time.Second
	fetchIdleTimeout    = 2 * time.Minute
	fetchMaxRedirects   = 5
)

// NewFetcher returns a Fetcher with the default policy and a size cap of
// MaxVolumeMiB.
func NewFetcher() *Fetcher {
	return &Fetcher{MaxBytes: MaxVolumeMiB << 20, IdleTimeout: fetchIdleTimeout}
}

func (f *Fetcher) httpClient() *http.Client {
	f.once.Do(func() {
		d := &net.Dialer{Timeout: fetchConnectTimeout, KeepAlive: 30 * time.Second,
			Control: func(network, address string, _ syscall.RawConn) error {
				if f.CheckAddr != nil {
					return f.CheckAddr(network, address)
				}
				return nil
			}}
		tr := &http.Transport{
			// No proxy from the environment: the address checked above is
			// the address the bytes come from.
			Proxy:                 nil,
			DialContext:           d.DialContext,
			TLSHandshakeTimeout:   fetchConnectTimeout,
			ResponseHeaderTimeout: fetchHeaderTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   2,
			ForceAttemptHTTP2:     true,
		}
		f.client = &http.Client{Transport: tr, CheckRedirect: checkFetchRedirect}
	})
	return f.client
}

// checkFetchRedirect follows a few http/https redirects and drops every
// credential on the way: a token for one URL is not sent to another, even
// on the same host.
func checkFetchRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= fetchMaxRedirects {
		return fmt.Errorf("more than %d redirects", fetchMaxRedirects)
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return fmt.Errorf("redirect to a %q URL refused", req.URL.Scheme)
	}
	req.Header.Del("Authorization")
	req.Header.Del("Cookie")
	return nil
}

// Get opens rawURL for reading. A non-empty token is sent as a bearer
// token to rawURL only (not after a redirect). It returns the body, capped
// as described on Fetcher, and the declared length (-1 if unknown). The
// caller closes the body; closing it or cancelling ctx ends the transfer.
func (f *Fetcher) Get(ctx context.Context, rawURL, token string) (io.ReadCloser, int64, error) {
	shown := redactURL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, 0, api.Errorf(api.CodeInvalid, "%s is not an http or https URL", shown)
	}
	if u.User != nil {
		return nil, 0, api.Errorf(api.CodeInvalid, "%s: credentials in the URL are not allowed", shown)
	}
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		cancel()
		return nil, 0, api.Errorf(api.CodeInvalid, "GET %s: invalid request", shown)
	}
	req.Header.Set("Accept", "application/octet-stream, */*")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.httpClient().Do(req)
	if err != nil {
		cancel()
		return nil, 0, fmt.Errorf("GET %s: %w", shown, unwrapURLError(err))
	}
	if resp.StatusCode != http.StatusOK {
		// The body may be anything the remote chose to say: drop it.
		resp.Body.Close()
		cancel()
		code := api.CodeInternal
		switch resp.StatusCode {
		case http.StatusNotFound:
			code = api.CodeNotFound
		case http.StatusConflict:
			code = api.CodeConflict
		case http.StatusUnauthorized, http.StatusForbidden:
			code = api.CodeInvalid
		}
		return nil, 0, api.Errorf(code, "GET %s: the server answered %s", shown, resp.Status)
	}
	limit := f.MaxBytes
	if limit <= 0 {
		limit = MaxVolumeMiB << 20
	}
	if resp.ContentLength > limit {
		resp.Body.Close()
		cancel()
		return nil, 0, api.Errorf(api.CodeInvalid, "GET %s: %d bytes is more than the limit of %d bytes", shown, resp.ContentLength, limit)
	}
	idle := f.IdleTimeout
	if idle <= 0 {
		idle = fetchIdleTimeout
	}
	b := &fetchBody{body: resp.Body, cancel: cancel, limit: limit, shown: shown, idle: idle}
	b.timer = time.AfterFunc(idle, b.stall)
	return b, resp.ContentLength, nil
}

// unwrapURLError drops the *url.Error wrapper, which prints the URL with
// its query string.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Errorf("timed out: %w", errTimeout)
		}
		return ue.Err
	}
	return err
}

var errTimeout = errors.New("no answer in time")

// fetchBody enforces the size cap and the idle timeout on a response body.
type fetchBody struct {
	body   io.ReadCloser
	cancel context.CancelFunc
	limit  int64
	read   int64
	shown  string
	idle   time.Duration
	timer  *time.Timer

	mu      sync.Mutex
	stalled bool
}

func (b *fetchBody) stall() {
	b.mu.Lock()
	b.stalled = true
	b.mu.Unlock()
	b.cancel()
}

func (b *fetchBody) Read(p []byte) (int, error) {
	if b.read >= b.limit {
		// One byte more tells a body of exactly the limit from a larger one.
		var one [1]byte
		n, err := b.body.Read(one[:])
		if n > 0 {
			return 0, api.Errorf(api.CodeInvalid, "GET %s: more than the limit of %d bytes", b.shown, b.limit)
		}
		return 0, b.readErr(err)
	}
	if rest := b.limit - b.read; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := b.body.Read(p)
	b.read += int64(n)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	return n, b.readErr(err)
}

// readErr names the URL (redacted) and a stall in a read error.
func (b *fetchBody) readErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	b.mu.Lock()
	stalled := b.stalled
	b.mu.Unlock()
	if stalled {
		return fmt.Errorf("GET %s: no data for %s: %w", b.shown, b.idle, errTimeout)
	}
	return fmt.Errorf("GET %s: %w", b.shown, unwrapURLError(err))
}

func (b *fetchBody) Close() error {
	b.timer.Stop()
	b.cancel()
	return b.body.Close()
}

// redactURL drops credentials, the query and the fragment from a URL for
// logs, errors and the API.
func redactURL(s string) string { return api.RedactURL(s) }
