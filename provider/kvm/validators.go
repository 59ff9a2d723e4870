package kvm

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/schema/validator"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Plan-time validators. Each wraps a rule of internal/api, the same code
// kvm-hostd runs on every request, so a value fails the plan exactly when
// the host would refuse it. They see only known values: unknown and null
// ones are checked by the host at apply.

// vmMigrations are the values of kvm_vm.migration: the host's migration
// modes, and replace (destroy and re-create), which the provider does.
var vmMigrations = append(append([]string{}, api.MigrationModes...), "replace")

type stringCheck struct {
	summary string // diagnostic summary; "" is "Invalid Attribute Value"
	desc    string
	check   func(string) error
}

var _ validator.String = stringCheck{}

func (v stringCheck) Description(context.Context) string         { return v.desc }
func (v stringCheck) MarkdownDescription(context.Context) string { return v.desc }

func (v stringCheck) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if err := v.check(req.ConfigValue.ValueString()); err != nil {
		summary := v.summary
		if summary == "" {
			summary = "Invalid Attribute Value"
		}
		resp.Diagnostics.AddAttributeError(req.Path, summary, err.Error())
	}
}

// validName checks an object name with api.ValidateName, so a hostile or
// mistyped name fails the plan instead of an apply halfway through.
func validName(kind string) validator.String {
	return stringCheck{
		desc:  "must be a valid " + kind + " name: " + api.NamePatternDescription,
		check: func(s string) error { return api.ValidateName(kind, s) },
	}
}

// vmObjectName is validName with an "Invalid <kind> Name" summary.
func vmObjectName(kind string) validator.String {
	v := validName(kind).(stringCheck)
	v.summary = "Invalid " + kind + " Name"
	return v
}

// httpURL checks for an absolute http:// or https:// URL with a host.
func httpURL() validator.String {
	return stringCheck{desc: "must be an http:// or https:// URL", check: api.ValidHTTPURL}
}

// checksumFormat checks "sha256:<64 hex digits>".
func checksumFormat() validator.String {
	return stringCheck{
		desc: "must look like `sha256:<64 hex digits>`",
		check: func(s string) error {
			_, _, err := api.ParseChecksum(s)
			return err
		},
	}
}

// macAddress checks a MAC address like 52:54:00:12:34:56.
func macAddress() validator.String {
	return stringCheck{
		desc: "must be a MAC address like 52:54:00:12:34:56",
		check: func(s string) error {
			if !api.ValidMAC(s) {
				return fmt.Errorf("%q must be a MAC address like 52:54:00:12:34:56", s)
			}
			return nil
		},
	}
}

// cpuSet checks a host CPU set such as "0-3,^2".
func cpuSet() validator.String {
	return stringCheck{
		desc: `must be a host CPU set like "0", "0-3" or "0,2"`,
		check: func(s string) error {
			_, err := api.ParseCPUSet(s)
			return err
		},
	}
}

// tagKey checks a key of kvm_vm.tags.
func tagKey() validator.String {
	return stringCheck{desc: fmt.Sprintf("1-%d bytes, no NUL", api.MaxTagKeyLength), check: api.ValidTagKey}
}

// description checks a VM's or snapshot's description.
func description() validator.String {
	return stringCheck{desc: fmt.Sprintf("at most %d bytes, no control characters but tab and newline", api.MaxDescriptionLength), check: api.CheckDescription}
}

// diskIDFormat checks a kvm_disk ID "<host>/<pool>/<name>" and the pool and
// volume names inside it. summary and hint shape the error of one attribute.
func diskIDFormat(summary, hint string) validator.String {
	return stringCheck{
		summary: summary,
		desc:    "must be a kvm_disk ID `<host>/<pool>/<name>`",
		check: func(s string) error {
			_, pool, name, err := ParseDiskID(s)
			if err == nil {
				if err = api.ValidateName("pool", pool); err == nil {
					err = api.ValidateName("volume", name)
				}
			}
			if err != nil {
				return fmt.Errorf("disk ID %q: %w%s", s, err, hint)
			}
			return nil
		},
	}
}

// waitDuration checks a positive Go duration such as "5m" or "90s".
func waitDuration() validator.String {
	return stringCheck{
		desc: `must be a positive duration like "90s" or "5m"`,
		check: func(s string) error {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				return fmt.Errorf("%q must be a positive duration like \"90s\" or \"5m\"", s)
			}
			return nil
		},
	}
}

// ipv4Address checks a dotted-quad IPv4 address without prefix length.
func ipv4Address() validator.String {
	return stringCheck{desc: "must be an IPv4 address like 10.0.0.10", check: api.ValidateIPv4Syntax}
}
