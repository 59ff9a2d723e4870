package service

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// A volume filled from elsewhere (a source_url download, a host-to-host
// copy) never exists under its own name until it is complete: it is
// written as a partial volume, ".partial-<name>-<id>", and renamed only
// once every byte is written and verified. A failed or cancelled fill
// deletes its partial volume; one cut short by a crash or kill -9 is
// deleted by the sweep at the next start. So a volume that exists under
// its name is always complete, even across restarts, and a user's name,
// which starts with a letter or digit, never collides with a partial one.
const partialPrefix = ".partial-"

func isPartialVolume(name string) bool { return strings.HasPrefix(name, partialPrefix) }

func partialVolumeName(name string) string { return partialPrefix + name + "-" + newID()[:12] }

// volumeFill is a running fill of one volume.
type volumeFill struct {
	partial string
	spec    api.VolumeSpec
	op      *api.Operation // as started; s.ops has the current state
	done    chan struct{}
}

type volumeFills struct {
	mu sync.Mutex
	m  map[string]*volumeFill // by volumeTarget
}

// filling returns the running fill of pool/name, if any.
func (s *Service) filling(pool, name string) (*volumeFill, bool) {
	s.fills.mu.Lock()
	defer s.fills.mu.Unlock()
	f, ok := s.fills.m[volumeTarget(pool, name)]
	return f, ok
}

// startFill creates the partial volume for pool/name from spec and starts
// an operation of kind running work on it, then renaming it to name. The
// caller holds the pool lock and has checked that name is free.
func (s *Service) startFill(ctx context.Context, kind, pool, name string, spec api.VolumeSpec,
	work func(ctx context.Context, partial string, progress func(float64)) error) (*volumeFill, error) {
	partial := partialVolumeName(name)
	if _, err := s.hv.CreateVolume(ctx, pool, partial, spec); err != nil {
		return nil, err
	}
	target := volumeTarget(pool, name)
	f := &volumeFill{partial: partial, spec: spec, done: make(chan struct{})}
	s.fills.mu.Lock()
	defer s.fills.mu.Unlock()
	if s.fills.m == nil {
		s.fills.m = map[string]*volumeFill{}
	}
	f.op = s.ops.start(kind, target, func(ctx context.Context, progress func(float64)) error {
		defer close(f.done)
		err := work(ctx, partial, progress)
		if err == nil {
			err = s.checkFilledImage(ctx, pool, name, partial, spec)
		}
		if err == nil {
			err = s.completeFill(pool, name, partial)
		}
		if err != nil {
			s.log.Warn("volume "+kind+" failed; deleting the partial volume", "volume", pool+"/"+name, "partial", partial, "err", err)
			s.discardPartial(pool, partial)
		}
		s.fills.mu.Lock()
		delete(s.fills.m, target)
		s.fills.mu.Unlock()
		return err
	})
	if f.op.State != api.OpRunning {
		// Refused (shutting down): the work never ran.
		s.discardPartial(pool, partial)
		return nil, toAPIError(errShuttingDown)
	}
	s.fills.m[target] = f
	return f, nil
}

// checkFilledImage refuses an image whose header says something other
// than what was asked for: another format, an external data file, or a
// backing file other than the clone's own base. Only then may it become a
// volume: QEMU would open whatever file such a header names, with the
// guest reading it.
func (s *Service) checkFilledImage(ctx context.Context, pool, name, partial string, spec api.VolumeSpec) error {
	info, err := s.hv.InspectVolume(ctx, pool, partial)
	if err != nil {
		return err
	}
	want := spec.Format
	if want == "" {
		want = api.FormatQCOW2
	}
	switch {
	case info.Format != want:
		return api.Errorf(api.CodeInvalid, "volume %s/%s: the image is %s, not the requested %s; refused", pool, name, info.Format, want)
	case info.DataFile != "":
		return api.Errorf(api.CodeInvalid, "volume %s/%s: the image names an external data file (%s); refused", pool, name, info.DataFile)
	case info.BackingFile != "":
		if spec.BaseVolume == "" {
			return api.Errorf(api.CodeInvalid, "volume %s/%s: the image names a backing file (%s); refused", pool, name, info.BackingFile)
		}
		base, err := s.hv.GetVolume(ctx, pool, spec.BaseVolume)
		if err != nil {
			return err
		}
		if info.BackingFile != base.Path || (info.BackingFormat != "" && info.BackingFormat != base.Format) {
			return api.Errorf(api.CodeInvalid, "volume %s/%s: the image's backing file is %s (%s), not its base %s (%s); refused",
				pool, name, info.BackingFile, info.BackingFormat, base.Path, base.Format)
		}
	}
	return nil
}

// completeFill gives a filled partial volume its name.
func (s *Service) completeFill(pool, name, partial string) error {
	unlock := s.lockPool(pool)
	defer unlock()
	if err := s.hv.RenameVolume(context.Background(), pool, partial, name); err != nil {
		return err
	}
	return nil
}

func (s *Service) discardPartial(pool, partial string) {
	unlock := s.lockPool(pool)
	defer unlock()
	if err := s.hv.DeleteVolume(context.Background(), pool, partial); err != nil && !api.IsNotFound(err) {
		s.log.Error("deleting a partial volume", "volume", pool+"/"+partial, "err", err)
	}
}

// partialView is what a PUT of a volume being filled answers: the volume
// as it will be named, with its running operation.
func (s *Service) partialView(ctx context.Context, pool, name string, f *volumeFill) (*api.Volume, error) {
	v, err := s.hv.GetVolume(ctx, pool, f.partial)
	if err != nil {
		v = &api.Volume{Pool: pool, Format: f.spec.Format, SizeMiB: f.spec.SizeMiB, BaseVolume: f.spec.BaseVolume}
	}
	v.Name, v.Path = name, ""
	v.SourceURL, v.SourceChecksum = f.spec.SourceURL, f.spec.SourceChecksum
	v.Operation = f.op
	if op, ok := s.ops.get(f.op.ID); ok {
		v.Operation = op
	}
	return v, nil
}

// cancelFill stops a running fill of pool/name and waits, up to ctx, until
// its partial volume is gone and its operation has ended (failed): a
// client polling the operation after the DELETE sees it over. It reports
// whether there was one.
func (s *Service) cancelFill(ctx context.Context, pool, name string) (bool, error) {
	f, ok := s.filling(pool, name)
	if !ok {
		return false, nil
	}
	s.ops.cancel(volumeTarget(pool, name))
	s.log.Info("volume fill cancelled", "volume", pool+"/"+name, "operation", f.op.ID)
	select {
	case <-f.done:
	case <-ctx.Done():
		return true, ctx.Err()
	}
	return true, s.ops.wait(ctx, f.op.ID)
}

// sweepPartials deletes the partial volumes a previous run left behind
// (it was killed while filling them); at startup no fill is running.
func (s *Service) sweepPartials(ctx context.Context, pool string) error {
	vols, err := s.hv.ListVolumes(ctx, pool)
	if err != nil {
		return err
	}
	for _, v := range vols {
		if !isPartialVolume(v.Name) {
			continue
		}
		if err := s.hv.DeleteVolume(ctx, pool, v.Name); err != nil && !api.IsNotFound(err) {
			return err
		}
		s.log.Warn("deleted an unfinished volume left by a previous run", "volume", pool+"/"+v.Name)
	}
	return nil
}

// Shutdown lets running operations finish until ctx is done, then cancels
// them; a cancelled download or copy deletes its partial volume (within
// grace), so nothing is left that looks complete.
func (s *Service) Shutdown(ctx context.Context, grace time.Duration) {
	if n := s.ops.drain(ctx, grace); n > 0 {
		s.log.Warn("cancelled running operations at shutdown", "count", n)
	}
}
