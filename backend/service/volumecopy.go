package service

import (
	"context"
	"fmt"
	"io"
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
	if err := s.validateServedPool(pool, name); err != nil {
		return 0, err
	}
	unlock, err := s.shareVolume(pool, name, "being read (copied to another host)")
	if err != nil {
		return 0, err
	}
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
	if err := s.checkKey(spec.Encryption, pool, name); err != nil {
		return nil, err
	}
	if spec.SizeMiB == 0 {
		return nil, invalid("spec.size_mib is required for a copy (the size of the source volume)")
	}
	if err := s.poolServed(pool); err != nil {
		return nil, err
	}
	v, err := s.idem.Do(idemKey, idemFingerprint("copy", pool, name, req), func() (any, error) {
		unlock := s.lockPool(pool)
		defer unlock()
		if f, ok := s.filling(pool, name); ok {
			if f.op.Kind == "copy" {
				if op, ok := s.ops.get(f.op.ID); ok {
					return op, nil
				}
			}
			return nil, conflict("volume %s/%s is being filled by %s operation %s", pool, name, f.op.Kind, f.op.ID)
		}
		if _, err := s.hv.GetVolume(ctx, pool, name); err == nil {
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
		if spec.BaseVolume == "" {
			if err := s.checkPoolSpace(ctx, pool, name, spec.SizeMiB, "the copy needs"); err != nil {
				return nil, err
			}
		}
		from := redactURL(req.ContentURL)
		token := req.Token
		s.log.Info("volume copy started", "volume", pool+"/"+name, "from", from)
		f, err := s.startFill(ctx, "copy", pool, name, spec, func(ctx context.Context, partial string, progress func(float64)) error {
			if err := s.copyInto(ctx, pool, name, partial, req.ContentURL, token, progress); err != nil {
				return err
			}
			s.log.Info("volume copy done", "volume", pool+"/"+name, "from", from)
			return nil
		})
		if err != nil {
			return nil, err
		}
		return f.op, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*api.Operation), nil
}

// copyInto fills the partial volume with another host's volume content,
// through the shared fetcher.
func (s *Service) copyInto(ctx context.Context, pool, name, partial, contentURL, token string, progress func(float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 12*time.Hour)
	defer cancel()
	from := redactURL(contentURL)
	body, length, err := s.fetcher.Get(ctx, contentURL, token)
	if err != nil {
		return fmt.Errorf("copying volume %s/%s from %s: %w", pool, name, from, err)
	}
	defer body.Close()
	pr := &progressReader{r: body, total: length, report: progress, log: func(done int64) {
		s.log.Info("copy progress", "volume", pool+"/"+name, "from", from, "bytes", done, "total", length)
	}}
	if err := s.hv.WriteVolume(ctx, pool, partial, crashingReader(pr, CrashCopyStreaming), length); err != nil {
		return fmt.Errorf("copying volume %s/%s from %s: %w", pool, name, from, err)
	}
	return nil
}
