package service

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// ReadVolumeContent streams a volume's contents to w (see
// Hypervisor.ReadVolume). It refuses, before writing anything, while a VM
// attaches the volume (a running guest writes to it) or an operation is
// still writing it. A volume that is the base of others can be read: bases
// are read-only.
func (s *Service) ReadVolumeContent(ctx context.Context, pool, name string, w io.Writer) (int64, error) {
	if err := validatePoolAndName(pool, name); err != nil {
		return 0, err
	}
	unlock := s.locks.Lock("volume/" + pool + "/" + name)
	defer unlock()
	v, err := s.volumeWithUsage(ctx, pool, name)
	if err != nil {
		return 0, err
	}
	if len(v.UsedBy) > 0 {
		return 0, conflict("volume %s/%s is attached to VM(s) %s; its contents can only be read while no VM attaches it", pool, name, strings.Join(v.UsedBy, ", "))
	}
	if op := s.ops.running(volumeTarget(pool, name)); op != nil {
		return 0, conflict("volume %s/%s is still being written (%s operation %s)", pool, name, op.Kind, op.ID)
	}
	s.log.Info("volume read started", "volume", pool+"/"+name)
	n, err := s.hv.ReadVolume(ctx, pool, name, w)
	if err != nil {
		s.log.Warn("volume read failed", "volume", pool+"/"+name, "bytes", n, "err", err)
		return n, fmt.Errorf("reading volume %s/%s: %w", pool, name, err)
	}
	s.log.Info("volume read done", "volume", pool+"/"+name, "bytes", n)
	return n, nil
}

// ContentFetcher GETs another host's volume content with a bearer token;
// replaceable in tests.
type ContentFetcher func(ctx context.Context, url, token string) (io.ReadCloser, int64, error)

func defaultContentFetcher() ContentFetcher {
	c := &http.Client{Timeout: 0}
	return func(ctx context.Context, u, token string) (io.ReadCloser, int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, 0, err
		}
		req.Header.Set("Accept", "application/octet-stream")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, 0, err
		}
		if resp.StatusCode != http.StatusOK {
			defer resp.Body.Close()
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
			e := &api.Error{Code: api.CodeInternal, Message: strings.TrimSpace(string(msg))}
			if ae := decodeAPIError(msg); ae != nil {
				e = ae
			}
			if resp.StatusCode == http.StatusNotFound {
				e.Code = api.CodeNotFound
			} else if resp.StatusCode == http.StatusConflict {
				e.Code = api.CodeConflict
			}
			return nil, 0, api.Errorf(e.Code, "GET %s: %s: %s", u, resp.Status, e.Message)
		}
		return resp.Body, resp.ContentLength, nil
	}
}

// CopyVolume creates a volume from req.Spec (as PutVolume would) and fills
// it, as an operation, with another host's volume content fetched from
// req.ContentURL. The same Idempotency-Key returns the same operation; a
// retry without one joins the running copy. If the copy fails, the
// half-written volume is deleted, so a volume that exists after a copy
// operation ended is complete.
func (s *Service) CopyVolume(ctx context.Context, pool, name string, req api.VolumeCopyRequest, idemKey string) (*api.Operation, error) {
	if err := validatePoolAndName(pool, name); err != nil {
		return nil, err
	}
	u, err := url.Parse(req.ContentURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, invalid("content_url must be an http or https URL without credentials")
	}
	spec := req.Spec
	if spec.Recreate {
		return nil, invalid("recreate is not allowed in a copy")
	}
	if err := api.ValidateVolumeSpec(&spec); err != nil {
		return nil, err
	}
	if spec.SizeMiB == 0 {
		return nil, invalid("spec.size_mib is required for a copy (the size of the source volume)")
	}
	v, err := s.idem.Do(idemKey, func() (any, error) {
		unlock := s.locks.Lock("pool/" + pool)
		defer unlock()
		target := volumeTarget(pool, name)
		if _, err := s.hv.GetVolume(ctx, pool, name); err == nil {
			if op := s.ops.running(target); op != nil && op.Kind == "copy" {
				return op, nil
			}
			return nil, conflict("volume %s/%s already exists on host %s; a copy creates it", pool, name, s.cfg.Name)
		} else if !api.IsNotFound(err) {
			return nil, err
		}
		if spec.BaseVolume != "" {
			if _, err := s.hv.GetVolume(ctx, pool, spec.BaseVolume); err != nil {
				if api.IsNotFound(err) {
					return nil, api.Errorf(api.CodeNotFound, "base volume %s/%s not found on host %s: a linked clone can only be copied to a host that has its base", pool, spec.BaseVolume, s.cfg.Name)
				}
				return nil, err
			}
		}
		if _, err := s.hv.CreateVolume(ctx, pool, name, spec); err != nil {
			return nil, err
		}
		from := redactURL(req.ContentURL)
		token := req.Token
		s.log.Info("volume copy started", "volume", pool+"/"+name, "from", from)
		return s.ops.start("copy", target, func(ctx context.Context, progress func(float64)) error {
			err := s.copyInto(ctx, pool, name, req.ContentURL, token, progress)
			if err == nil {
				s.log.Info("volume copy done", "volume", pool+"/"+name, "from", from)
				return nil
			}
			s.log.Warn("volume copy failed; deleting the partial copy", "volume", pool+"/"+name, "from", from, "err", err)
			unlock := s.locks.Lock("pool/" + pool)
			defer unlock()
			if derr := s.hv.DeleteVolume(context.Background(), pool, name); derr != nil && !api.IsNotFound(derr) {
				s.log.Error("deleting a failed copy", "volume", pool+"/"+name, "err", derr)
				return fmt.Errorf("%w (and deleting the partial copy failed: %v)", err, derr)
			}
			return err
		}), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*api.Operation), nil
}

func (s *Service) copyInto(ctx context.Context, pool, name, contentURL, token string, progress func(float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 12*time.Hour)
	defer cancel()
	from := redactURL(contentURL)
	body, length, err := s.fetchContent(ctx, contentURL, token)
	if err != nil {
		return fmt.Errorf("copying volume %s/%s from %s: %w", pool, name, from, err)
	}
	defer body.Close()
	pr := &progressReader{r: body, total: length, report: progress, log: func(done int64) {
		s.log.Info("copy progress", "volume", pool+"/"+name, "from", from, "bytes", done, "total", length)
	}}
	unlock := s.locks.Lock("volume/" + pool + "/" + name)
	defer unlock()
	if err := s.hv.WriteVolume(ctx, pool, name, pr, length); err != nil {
		return fmt.Errorf("copying volume %s/%s from %s: %w", pool, name, from, err)
	}
	return nil
}

// redactURL drops a query and credentials from a URL for logs and errors.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// decodeAPIError reads a kvm-hostd {code,message} error body, or nil.
func decodeAPIError(b []byte) *api.Error {
	var e api.Error
	if json.Unmarshal(b, &e) != nil || e.Code == "" {
		return nil
	}
	return &e
}
