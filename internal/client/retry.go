package client

import (
	"context"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// CheckRetry decides whether a request is worth repeating. Reads and the
// idempotent PUT/DELETE are retried on connection errors, 429 and 5xx
// (except 501, which will not change); POST only when it carries an
// Idempotency-Key, because the host may have acted on the first attempt.
// A context that is done stops retrying at once.
func CheckRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	var req *http.Request
	if resp != nil {
		req = resp.Request
	}
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			var cerr *x509.UnknownAuthorityError
			var herr x509.HostnameError
			if errors.As(err, &cerr) || errors.As(err, &herr) {
				return false, err // TLS misconfiguration: retrying cannot help
			}
		}
		// retryablehttp gives us no request on transport errors; the
		// method check happens in the request hook below.
		return retryableMethodFromCtx(ctx), nil
	}
	if req != nil && !retryableRequest(req) {
		return false, nil
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return true, nil
	case resp.StatusCode == http.StatusNotImplemented:
		return false, nil
	case resp.StatusCode >= 500:
		return true, nil
	}
	return false, nil
}

func retryableRequest(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodOptions:
		return true
	case http.MethodPost, http.MethodPatch:
		return req.Header.Get(api.HeaderIdempotencyKey) != ""
	}
	return false
}

type methodKey struct{}

// withMethod records whether the logical request may be retried after a
// transport error, where CheckRetry sees no request.
func withMethod(ctx context.Context, method string, hasKey bool) context.Context {
	ok := false
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodOptions:
		ok = true
	case http.MethodPost, http.MethodPatch:
		ok = hasKey
	}
	return context.WithValue(ctx, methodKey{}, ok)
}

func retryableMethodFromCtx(ctx context.Context) bool {
	ok, _ := ctx.Value(methodKey{}).(bool)
	return ok
}

// JitterBackoff is exponential backoff with full jitter, honouring a
// server's Retry-After on 429/503 up to maxRetryAfter so a misbehaving
// server cannot park the provider for minutes.
func JitterBackoff(maxRetryAfter time.Duration) func(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
	return func(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
		if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
			if s := resp.Header.Get("Retry-After"); s != "" {
				if secs, err := strconv.ParseInt(s, 10, 64); err == nil && secs >= 0 {
					// Capped in seconds, before converting: a huge
					// Retry-After would overflow into a negative wait.
					if secs > int64(maxRetryAfter/time.Second) {
						return maxRetryAfter
					}
					return time.Duration(secs) * time.Second
				}
			}
		}
		ceil := min << uint(attempt)
		if ceil <= 0 || ceil > max {
			ceil = max
		}
		// Full jitter: uniform in [min/2, ceil] spreads retries of many
		// concurrent resources instead of synchronising them.
		lo := min / 2
		return lo + time.Duration(rand.Int64N(int64(ceil-lo)+1))
	}
}
