// Command realstack-sweep finds what real-stack tests left on the system libvirt:
// domains using, and pools at, realstack.TestPoolRoot, and files there. Without
// flags it removes them (scripts/test.sh runs it before the tests, for leftovers of
// a crashed run); with -check it only lists them and exits 1 if there are any
// (scripts/test.sh runs it after the tests: a run must leave nothing behind).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

func main() {
	check := flag.Bool("check", false, "list the leftovers and exit 1 if there are any; remove nothing")
	uri := flag.String("uri", realstack.SystemURI, "libvirt URI")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if *check {
		left, err := realstack.TestLeftovers(ctx, *uri)
		if err != nil {
			fmt.Fprintln(os.Stderr, "realstack-sweep:", err)
			os.Exit(2)
		}
		for _, l := range left {
			fmt.Printf("left behind on %s: %s\n", *uri, l)
		}
		if len(left) > 0 {
			os.Exit(1)
		}
		fmt.Printf("nothing left behind on %s under %s\n", *uri, realstack.TestPoolRoot)
		return
	}
	removed, inUse, err := realstack.SweepUnusedTestLeftovers(ctx, *uri)
	for _, l := range removed {
		fmt.Printf("removed a leftover of an earlier run: %s\n", l)
	}
	if inUse {
		fmt.Fprintln(os.Stderr, "realstack-sweep: a running test uses", realstack.TestPoolRoot, "- nothing removed")
		os.Exit(1)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "realstack-sweep:", err)
		os.Exit(1)
	}
}
