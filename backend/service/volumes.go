package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// MaxVolumeMiB bounds a volume's size (64 TiB) so a typo cannot exhaust
// the pool.
const MaxVolumeMiB = api.MaxVolumeMiB

func parseChecksum(s string) (string, []byte, error) {
	algo, sum, err := api.ParseChecksum(s)
	if err != nil {
		return "", nil, invalid("source_checksum %s", err)
	}
	return algo, sum, nil
}

func validatePoolAndName(pool, name string) error {
	if err := api.ValidateName("pool", pool); err != nil {
		return invalid("%s", err)
	}
	if err := api.ValidateName("volume", name); err != nil {
		return invalid("%s", err)
	}
	return nil
}

// ListVolumes lists a pool's volumes.
func (s *Service) ListVolumes(ctx context.Context, pool string) ([]api.Volume, error) {
	if err := api.ValidateName("pool", pool); err != nil {
		return nil, invalid("%s", err)
	}
	return s.hv.ListVolumes(ctx, pool)
}

// GetVolume reads a volume, with the download operation if one is running.
// With usage it also fills UsedBy and Children, which costs a scan of the
// pool and every domain; plain reads skip it.
func (s *Service) GetVolume(ctx context.Context, pool, name string, usage bool) (*api.Volume, error) {
	if err := validatePoolAndName(pool, name); err != nil {
		return nil, err
	}
	get := s.hv.GetVolume
	if usage {
		get = s.volumeWithUsage
	}
	v, err := get(ctx, pool, name)
	if err != nil {
		return nil, err
	}
	v.Operation = s.ops.running(volumeTarget(pool, name))
	return v, nil
}

// volumeWithUsage reads a volume with the domains attaching it and the
// volumes backed by it.
func (s *Service) volumeWithUsage(ctx context.Context, pool, name string) (*api.Volume, error) {
	v, err := s.hv.GetVolume(ctx, pool, name)
	if err != nil {
		return nil, err
	}
	if v.UsedBy, v.Children, err = s.hv.VolumeUsage(ctx, pool, name); err != nil {
		return nil, err
	}
	return v, nil
}

func volumeTarget(pool, name string) string { return "volume/" + pool + "/" + name }

// PutVolume creates a volume; creating one that exists with the same spec
// returns it (created=false), with a different spec is a conflict. A
// source_url download runs as an operation; the returned volume carries it.
func (s *Service) PutVolume(ctx context.Context, pool, name string, spec api.VolumeSpec) (v *api.Volume, created bool, err error) {
	if err := validatePoolAndName(pool, name); err != nil {
		return nil, false, err
	}
	if err := api.ValidateVolumeSpec(&spec); err != nil {
		return nil, false, err
	}
	unlock := s.locks.Lock("pool/" + pool)
	defer unlock()

	existing, err := s.hv.GetVolume(ctx, pool, name)
	switch {
	case err == nil:
		if diff := volumeSpecDiff(spec, existing); diff != "" {
			return nil, false, conflict("volume %s/%s already exists with a different %s", pool, name, diff)
		}
		if spec.Recreate {
			// A fresh, empty copy for a (retried) migration: only when
			// nothing uses the volume, so no data anyone sees is lost.
			if existing.UsedBy, existing.Children, err = s.hv.VolumeUsage(ctx, pool, name); err != nil {
				return nil, false, err
			}
			if len(existing.UsedBy) > 0 {
				return nil, false, conflict("volume %s/%s is attached to VM(s) %s; it cannot be recreated", pool, name, strings.Join(existing.UsedBy, ", "))
			}
			if len(existing.Children) > 0 {
				return nil, false, conflict("volume %s/%s is the base of volume(s) %s; it cannot be recreated", pool, name, strings.Join(existing.Children, ", "))
			}
			if spec.SourceURL != "" {
				return nil, false, invalid("recreate is for empty volumes and linked clones, not source_url volumes")
			}
			if spec.SizeMiB == 0 {
				spec.SizeMiB = existing.SizeMiB
			}
			if spec.IOTune == nil && !existing.IOTune.IsZero() {
				spec.IOTune = existing.IOTune
			}
			if err := s.hv.DeleteVolume(ctx, pool, name); err != nil {
				return nil, false, fmt.Errorf("recreating volume %s/%s: %w", pool, name, err)
			}
			v, err = s.hv.CreateVolume(ctx, pool, name, spec)
			if err != nil {
				return nil, false, fmt.Errorf("recreating volume %s/%s: %w", pool, name, err)
			}
			s.log.Info("volume recreated empty", "volume", pool+"/"+name, "base", spec.BaseVolume)
			return v, true, nil
		}
		if op := s.ops.last(volumeTarget(pool, name)); op != nil && op.State == api.OpFailed && spec.SourceURL != "" {
			// A previous download failed: retry it rather than report a
			// half-written volume as done.
			existing.Operation = s.startDownload(pool, name, spec)
			return existing, false, nil
		}
		existing.Operation = s.ops.running(volumeTarget(pool, name))
		return existing, false, nil
	case !api.IsNotFound(err):
		return nil, false, err
	}
	if spec.BaseVolume != "" {
		if _, err := s.hv.GetVolume(ctx, pool, spec.BaseVolume); err != nil {
			if api.IsNotFound(err) {
				return nil, false, api.Errorf(api.CodeNotFound, "base volume %s/%s not found", pool, spec.BaseVolume)
			}
			return nil, false, err
		}
	}
	create := spec
	if spec.SourceURL != "" && create.SizeMiB == 0 {
		create.SizeMiB = 1 // placeholder; the image defines the size
	}
	v, err = s.hv.CreateVolume(ctx, pool, name, create)
	if err != nil {
		return nil, false, err
	}
	if spec.SourceURL != "" {
		v.Operation = s.startDownload(pool, name, spec)
	}
	return v, true, nil
}

// volumeSpecDiff names the first attribute where an existing volume differs
// from a create request, or "" if the request matches.
func volumeSpecDiff(spec api.VolumeSpec, v *api.Volume) string {
	switch {
	case spec.Format != v.Format:
		return fmt.Sprintf("format (%s, requested %s)", v.Format, spec.Format)
	case spec.BaseVolume != v.BaseVolume:
		return fmt.Sprintf("base volume (%q, requested %q)", v.BaseVolume, spec.BaseVolume)
	case spec.SourceURL != v.SourceURL:
		return fmt.Sprintf("source_url (%q, requested %q)", v.SourceURL, spec.SourceURL)
	case spec.SourceURL == "" && spec.SizeMiB != 0 && spec.SizeMiB != v.SizeMiB && spec.BaseVolume == "":
		return fmt.Sprintf("size (%d MiB, requested %d MiB)", v.SizeMiB, spec.SizeMiB)
	}
	return ""
}

func (s *Service) startDownload(pool, name string, spec api.VolumeSpec) *api.Operation {
	return s.ops.start("download", volumeTarget(pool, name), func(ctx context.Context, progress func(float64)) error {
		return s.download(ctx, pool, name, spec, progress)
	})
}

// Fetcher opens a URL for download; replaceable in tests.
type Fetcher func(ctx context.Context, url string) (io.ReadCloser, int64, error)

func defaultFetcher() Fetcher {
	c := &http.Client{Timeout: 0}
	return func(ctx context.Context, u string) (io.ReadCloser, int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, 0, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, 0, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		return resp.Body, resp.ContentLength, nil
	}
}

// download streams the image straight into the volume (never buffering it
// whole), logging progress and verifying the checksum as it goes.
func (s *Service) download(ctx context.Context, pool, name string, spec api.VolumeSpec, progress func(float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 6*time.Hour)
	defer cancel()
	body, length, err := s.fetch(ctx, spec.SourceURL)
	if err != nil {
		return api.Errorf(api.CodeInvalid, "downloading %s: %v", spec.SourceURL, err)
	}
	defer body.Close()
	var h hash.Hash
	var want []byte
	if spec.SourceChecksum != "" {
		_, want, _ = parseChecksum(spec.SourceChecksum)
		h = sha256.New()
	}
	pr := &progressReader{r: body, total: length, report: progress, log: func(done int64) {
		s.log.Info("download progress", "volume", pool+"/"+name, "url", spec.SourceURL, "bytes", done, "total", length)
	}}
	var r io.Reader = pr
	if h != nil {
		r = io.TeeReader(pr, h)
	}
	unlock := s.locks.Lock("volume/" + pool + "/" + name)
	defer unlock()
	if err := s.hv.WriteVolume(ctx, pool, name, r, length); err != nil {
		return fmt.Errorf("writing %s into volume %s/%s: %w", spec.SourceURL, pool, name, err)
	}
	if h != nil {
		if got := h.Sum(nil); !bytes.Equal(got, want) {
			return api.Errorf(api.CodeInvalid, "checksum mismatch for %s: got sha256:%x, want %s", spec.SourceURL, got, spec.SourceChecksum)
		}
	}
	s.log.Info("download done", "volume", pool+"/"+name, "url", spec.SourceURL, "bytes", pr.done)
	return nil
}

type progressReader struct {
	r          io.Reader
	total      int64
	done       int64
	lastLogged int64
	report     func(float64)
	log        func(done int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if p.total > 0 {
		p.report(float64(p.done) / float64(p.total))
	}
	if p.done-p.lastLogged >= 64<<20 {
		p.lastLogged = p.done
		p.log(p.done)
	}
	return n, err
}

// UpdateVolume grows a volume and/or changes its I/O limits. Shrinking is
// refused: it would destroy data.
func (s *Service) UpdateVolume(ctx context.Context, pool, name string, u api.VolumeUpdate) (*api.Volume, error) {
	if err := validatePoolAndName(pool, name); err != nil {
		return nil, err
	}
	if err := api.ValidateIOTune(u.IOTune); err != nil {
		return nil, err
	}
	unlock := s.locks.Lock("volume/" + pool + "/" + name)
	defer unlock()
	v, err := s.hv.GetVolume(ctx, pool, name)
	if err != nil {
		return nil, err
	}
	if u.SizeMiB != nil && *u.SizeMiB != v.SizeMiB {
		if *u.SizeMiB < v.SizeMiB {
			return nil, invalid("volume %s/%s is %d MiB; shrinking to %d MiB is refused because it would destroy data", pool, name, v.SizeMiB, *u.SizeMiB)
		}
		if *u.SizeMiB > MaxVolumeMiB {
			return nil, invalid("size_mib %d is out of range (1..%d)", *u.SizeMiB, MaxVolumeMiB)
		}
		if err := s.hv.ResizeVolume(ctx, pool, name, *u.SizeMiB); err != nil {
			return nil, fmt.Errorf("growing volume %s/%s to %d MiB: %w", pool, name, *u.SizeMiB, err)
		}
	}
	if u.IOTune != nil {
		if err := s.hv.SetVolumeIOTune(ctx, pool, name, u.IOTune); err != nil {
			return nil, fmt.Errorf("setting iotune on volume %s/%s: %w", pool, name, err)
		}
	}
	return s.hv.GetVolume(ctx, pool, name)
}

// DeleteVolume deletes a volume that no domain attaches and no other volume
// is backed by; otherwise it refuses with a conflict naming the users.
func (s *Service) DeleteVolume(ctx context.Context, pool, name string) error {
	if err := validatePoolAndName(pool, name); err != nil {
		return err
	}
	unlock := s.locks.Lock("pool/" + pool)
	defer unlock()
	v, err := s.volumeWithUsage(ctx, pool, name)
	if err != nil {
		return err
	}
	if len(v.UsedBy) > 0 {
		return conflict("volume %s/%s is attached to VM(s) %s; detach it first", pool, name, strings.Join(v.UsedBy, ", "))
	}
	if len(v.Children) > 0 {
		return conflict("volume %s/%s is the base of volume(s) %s; delete those first", pool, name, strings.Join(v.Children, ", "))
	}
	if op := s.ops.running(volumeTarget(pool, name)); op != nil {
		return conflict("volume %s/%s is still being downloaded (operation %s)", pool, name, op.ID)
	}
	return s.hv.DeleteVolume(ctx, pool, name)
}
