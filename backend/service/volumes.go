package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/backend/reqtrace"
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

// validateServedPool is validatePoolAndName for a pool this host serves.
func (s *Service) validateServedPool(pool, name string) error {
	if err := validatePoolAndName(pool, name); err != nil {
		return err
	}
	return s.poolServed(pool)
}

// ListVolumes lists a pool's volumes.
func (s *Service) ListVolumes(ctx context.Context, pool string) ([]api.Volume, error) {
	if err := api.ValidateName("pool", pool); err != nil {
		return nil, invalid("%s", err)
	}
	if err := s.poolServed(pool); err != nil {
		return nil, err
	}
	all, err := s.hv.ListVolumes(ctx, pool)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, v := range all {
		if !isPartialVolume(v.Name) {
			out = append(out, v)
		}
	}
	return out, nil
}

// GetVolume reads a volume, with the download operation if one is running.
// With usage it also fills UsedBy and Children, which costs a scan of the
// pool and every domain; plain reads skip it.
func (s *Service) GetVolume(ctx context.Context, pool, name string, usage bool) (*api.Volume, error) {
	// A plain read may name a cloud-init seed image (to see that it is
	// there); writing, attaching or reading the content of one may not.
	if err := api.ValidateName("pool", pool); err != nil {
		return nil, invalid("%s", err)
	}
	if err := api.ValidateName("stored volume", name); err != nil {
		return nil, invalid("%s", err)
	}
	if err := s.poolServed(pool); err != nil {
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
	if err := s.poolServed(pool); err != nil {
		return nil, false, err
	}
	if err := s.checkKey(spec.Encryption, pool, name); err != nil {
		return nil, false, err
	}
	endLock := reqtrace.Start(ctx, "lock")
	unlock := s.lockPool(pool)
	endLock()
	defer unlock()

	endLookup := reqtrace.Start(ctx, "lookup")
	existing, err := s.hv.GetVolume(ctx, pool, name)
	endLookup()
	switch {
	case err == nil:
		if diff := volumeSpecDiff(spec, existing); diff != "" {
			if existing, err = s.adoptShared(ctx, pool, name, spec, existing); err != nil {
				return nil, false, err
			}
			if diff := volumeSpecDiff(spec, existing); diff != "" {
				return nil, false, conflict("volume %s/%s already exists with a different %s", pool, name, diff)
			}
		}
		if spec.Recreate {
			// A fresh, empty copy for a (retried) migration: only when
			// nothing uses the volume, so no data anyone sees is lost.
			unclaim, err := s.lockVolume(pool, name, "being recreated")
			if err != nil {
				return nil, false, err
			}
			defer unclaim()
			if op := s.ops.running(volumeTarget(pool, name)); op != nil {
				return nil, false, conflict("volume %s/%s is still being written (%s operation %s); it cannot be recreated", pool, name, op.Kind, op.ID)
			}
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
			if spec.Encryption == nil {
				spec.Encryption = existing.Encryption
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
		return existing, false, nil
	case !api.IsNotFound(err):
		return nil, false, err
	}
	if f, ok := s.filling(pool, name); ok {
		// Being downloaded or copied: join a matching download, refuse
		// anything else.
		if diff := volumeSpecDiff(spec, &api.Volume{Format: f.spec.Format, BaseVolume: f.spec.BaseVolume,
			SourceURL: f.spec.SourceURL, SizeMiB: f.spec.SizeMiB}); diff != "" || f.op.Kind != "download" {
			return nil, false, conflict("volume %s/%s is being filled by %s operation %s", pool, name, f.op.Kind, f.op.ID)
		}
		v, err := s.partialView(ctx, pool, name, f)
		return v, false, err
	}
	if spec.BaseVolume != "" {
		unclaim, err := s.claimBase(ctx, pool, spec.BaseVolume, name)
		if err != nil {
			return nil, false, err
		}
		defer unclaim()
	}
	if spec.SourceURL != "" {
		// The image's size is known only once it arrives; a size_mib
		// given with it is checked now.
		if err := s.checkPoolSpace(ctx, pool, name, spec.SizeMiB, "it needs"); err != nil {
			return nil, false, err
		}
		create := spec
		if create.SizeMiB == 0 {
			create.SizeMiB = 1 // placeholder; the image defines the size
		}
		f, err := s.startFill(ctx, "download", pool, name, create, func(ctx context.Context, partial string, progress func(float64)) error {
			return s.download(ctx, pool, name, partial, spec, progress)
		})
		if err != nil {
			return nil, false, err
		}
		v, err := s.partialView(ctx, pool, name, f)
		return v, true, err
	}
	if spec.BaseVolume == "" {
		// A linked clone starts empty and shares its base: O(1), like
		// the base it grows from, which has been admitted already.
		if err := s.checkPoolSpace(ctx, pool, name, spec.SizeMiB, "it needs"); err != nil {
			return nil, false, err
		}
	}
	endCreate := reqtrace.Start(ctx, "create")
	v, err = s.hv.CreateVolume(ctx, pool, name, spec)
	endCreate()
	if err != nil {
		return nil, false, err
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
		return fmt.Sprintf("source_url (%q, requested %q)", redactURL(v.SourceURL), redactURL(spec.SourceURL))
	case spec.SourceURL == "" && spec.SizeMiB != 0 && spec.SizeMiB != v.SizeMiB && spec.BaseVolume == "":
		return fmt.Sprintf("size (%d MiB, requested %d MiB)", v.SizeMiB, spec.SizeMiB)
	case spec.Encryption.KeyName() != v.Encryption.KeyName() && !(spec.Recreate && spec.Encryption == nil):
		return fmt.Sprintf("encryption key (%q, requested %q)", v.Encryption.KeyName(), spec.Encryption.KeyName())
	}
	return ""
}

// download streams the image into the partial volume (never buffering it
// whole) through the shared fetcher, logging progress and verifying the
// checksum as it goes; the fill renames it only once the bytes are
// verified.
func (s *Service) download(ctx context.Context, pool, name, partial string, spec api.VolumeSpec, progress func(float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 6*time.Hour)
	defer cancel()
	from := redactURL(spec.SourceURL)
	body, length, err := s.fetcher.Get(ctx, spec.SourceURL, "")
	if err != nil {
		return api.Errorf(api.CodeInvalid, "downloading %s: %v", from, err)
	}
	defer body.Close()
	crashpoint(CrashDownloadStarted)
	var h hash.Hash
	var want []byte
	if spec.SourceChecksum != "" {
		_, want, _ = parseChecksum(spec.SourceChecksum)
		h = sha256.New()
	}
	pr := &progressReader{r: body, total: length, report: progress, log: func(done int64) {
		s.log.Info("download progress", "volume", pool+"/"+name, "url", from, "bytes", done, "total", length)
	}}
	var r io.Reader = pr
	if h != nil {
		r = io.TeeReader(pr, h)
	}
	if err := s.hv.WriteVolume(ctx, pool, partial, r, length); err != nil {
		return fmt.Errorf("writing %s into volume %s/%s: %w", from, pool, name, err)
	}
	crashpoint(CrashDownloadWritten)
	if h != nil {
		if got := h.Sum(nil); !bytes.Equal(got, want) {
			return api.Errorf(api.CodeInvalid, "checksum mismatch for %s: got sha256:%x, want %s", from, got, spec.SourceChecksum)
		}
	}
	s.log.Info("download done", "volume", pool+"/"+name, "url", from, "bytes", pr.done)
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
	if err := s.validateServedPool(pool, name); err != nil {
		return nil, err
	}
	if err := api.ValidateIOTune(u.IOTune); err != nil {
		return nil, err
	}
	unlock, err := s.lockVolume(pool, name, "being updated")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if op := s.ops.running(volumeTarget(pool, name)); op != nil {
		return nil, conflict("volume %s/%s is still being written (%s operation %s)", pool, name, op.Kind, op.ID)
	}
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
		if err := s.checkPoolSpace(ctx, pool, name, *u.SizeMiB-v.SizeMiB, "growing it needs"); err != nil {
			return nil, err
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
	if err := s.validateServedPool(pool, name); err != nil {
		return err
	}
	// A volume still being filled is not complete, so nothing uses it:
	// deleting it stops the transfer and removes what was written.
	if cancelled, err := s.cancelFill(ctx, pool, name); cancelled {
		return err
	}
	unlock := s.lockPool(pool)
	defer unlock()
	unclaim, err := s.lockVolume(pool, name, "being deleted")
	if err != nil {
		return err
	}
	defer unclaim()
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
	return s.hv.DeleteVolume(ctx, pool, name)
}
