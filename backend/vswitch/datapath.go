package vswitch

import (
	"context"
	"time"
)

// vswitchdCurrent reports whether ovs-vswitchd has applied the latest
// configuration, so that its absence of ofports means failure.
func (s *OVS) vswitchdCurrent(ctx context.Context) bool {
	root, err := s.root(ctx)
	return err == nil && root.CurCfg >= root.NextCfg && root.CurCfg > 0
}

// bridgeDatapath is the datapath_type for a new bridge.
func (s *OVS) bridgeDatapath() string {
	s.dpMu.Lock()
	defer s.dpMu.Unlock()
	return s.datapath
}

func (s *OVS) useNetdev(bridge string, i *Interface) {
	s.dpMu.Lock()
	defer s.dpMu.Unlock()
	if s.datapath != DatapathNetdev {
		msg := ""
		if i.Error != nil {
			msg = *i.Error
		}
		s.log.Warn("kernel datapath unusable, using netdev bridges", "bridge", bridge, "error", msg)
		s.datapath = DatapathNetdev
	}
}

// verifyDP says whether a new bridge's datapath must be verified: only a
// guessed "system" against a real ovs-vswitchd.
func (s *OVS) verifyDP() bool {
	return s.autoDP && s.embedded == nil && s.bridgeDatapath() != DatapathNetdev
}

// verifyDatapath checks a freshly created system bridge. Without the
// openvswitch kernel module ovs-vswitchd fails to create it (only its log
// says so) while the database transaction succeeded, and the bridge's
// internal interface never gets an ofport (or gets -1). Once vswitchd has
// caught up with our next_cfg, such a bridge is switched to netdev, and so
// is every later one.
func (s *OVS) verifyDatapath(ctx context.Context, brName string) error {
	if !s.verifyDP() {
		return nil
	}
	br := &Bridge{Name: brName}
	if err := s.client.Get(ctx, br); err != nil || br.DatapathType == DatapathNetdev {
		return nil
	}
	// Without a running vswitchd cur_cfg never catches up; keep the bridge.
	deadline := time.Now().Add(5 * time.Second)
	for {
		root, err := s.root(ctx)
		if err != nil {
			return err
		}
		if root.CurCfg >= root.NextCfg {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.log.Warn("ovs-vswitchd did not apply the new bridge in time; datapath not verified", "bridge", brName)
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	i := &Interface{Name: brName}
	if err := s.client.Get(ctx, i); err != nil {
		return nil
	}
	if !datapathFailed(i) {
		return nil
	}
	s.useNetdev(brName, i)
	b := &Bridge{UUID: br.UUID, DatapathType: DatapathNetdev}
	t := &txn{s: s}
	t.add(s.client.Where(b).Update(b, &b.DatapathType))
	_, err := t.commit(ctx)
	return err
}

// datapathFailed reads a bridge's internal interface after vswitchd has
// applied the configuration: no ofport (or -1) means no datapath.
func datapathFailed(i *Interface) bool {
	return i.Ofport == nil || *i.Ofport == -1
}
