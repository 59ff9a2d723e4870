// Command kvm-hostd is the per-host agent of terraform-provider-kvm.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kvmfleet/terraform-provider-kvm/backend/hostd"
)

var version = "dev"

func main() {
	os.Exit(run())
}

func run() int {
	hostd.Version = version
	cfg, err := hostd.ParseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, hostd.ErrVersion) {
		fmt.Println("kvm-hostd", version)
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvm-hostd: %v\n", err)
		return 2
	}
	m := &hostd.Main{Config: cfg, Stdout: os.Stdout, Log: hostd.NewLogger(cfg, os.Stderr)}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := m.Open(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "kvm-hostd: %v\n", err)
		return 1
	}
	defer m.Close()
	// SIGHUP re-reads the TLS certificate and key (after a renewal) without
	// dropping connections.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			_ = m.ReloadTLS()
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- m.Serve() }()
	select {
	case err := <-errc:
		if err != nil {
			fmt.Fprintf(os.Stderr, "kvm-hostd: %v\n", err)
			return 1
		}
		return 0
	case <-ctx.Done():
	}
	// Graceful: finish in-flight requests and operations first.
	m.Log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := m.Shutdown(sctx); err != nil {
		fmt.Fprintf(os.Stderr, "kvm-hostd: shutdown: %v\n", err)
		return 1
	}
	m.Log.Info("stopped")
	return 0
}
