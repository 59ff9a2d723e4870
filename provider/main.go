// Command terraform-provider-kvm is the Terraform provider for fleets of KVM
// hosts running kvm-hostd.
package main

import (
	"context"
	"flag"
	"log"
	"os"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"

	"github.com/kvmfleet/terraform-provider-kvm/provider/kvm"
)

// version is set by goreleaser with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	var debug bool
	flag.BoolVar(&debug, "debug", false, "run the provider with support for debuggers like delve")
	flag.Parse()
	quietSDKLogs()
	err := providerserver.Serve(context.Background(), kvm.New(version), providerserver.ServeOpts{
		Address: "registry.terraform.io/kvmfleet/kvm",
		Debug:   debug,
	})
	if err != nil {
		log.Fatal(err.Error())
	}
}

// quietSDKLogs turns off the SDK's own trace logging (every RPC, every
// attribute's plan modifier and validator) when Terraform will discard it
// anyway: Terraform keeps a provider's log lines only with TF_LOG or
// TF_LOG_PROVIDER set, but the SDK logs at trace level unless told
// otherwise, and encoding those lines (here) and parsing them (in
// Terraform) was a quarter of the CPU time of a no-op plan of thousands of
// resources. Any TF_LOG_SDK* a user sets is kept.
func quietSDKLogs() {
	if os.Getenv("TF_LOG") != "" || os.Getenv("TF_LOG_PROVIDER") != "" {
		return
	}
	for _, k := range []string{"TF_LOG_SDK", "TF_LOG_SDK_PROTO", "TF_LOG_SDK_FRAMEWORK"} {
		if os.Getenv(k) == "" {
			_ = os.Setenv(k, "off")
		}
	}
}
