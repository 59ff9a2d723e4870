package kvm

import (
	"context"
	"fmt"
	"net/url"
	"regexp"

	"github.com/hashicorp/terraform-plugin-framework/schema/validator"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Plan-time string validators shared by resources. They see only known
// values: unknown and null ones are checked again by the host at apply.

type stringCheck struct {
	desc  string
	check func(string) error
}

var _ validator.String = stringCheck{}

func (v stringCheck) Description(context.Context) string         { return v.desc }
func (v stringCheck) MarkdownDescription(context.Context) string { return v.desc }

func (v stringCheck) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if err := v.check(req.ConfigValue.ValueString()); err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid Attribute Value", err.Error())
	}
}

// validName checks an object name with api.ValidateName, the same rule the
// host enforces, so a hostile or mistyped name fails the plan instead of an
// apply halfway through.
func validName(kind string) validator.String {
	return stringCheck{
		desc:  "must be a valid " + kind + " name: " + api.NamePatternDescription,
		check: func(s string) error { return api.ValidateName(kind, s) },
	}
}

// httpURL checks for an absolute http:// or https:// URL with a host.
func httpURL() validator.String {
	return stringCheck{
		desc: "must be an http:// or https:// URL",
		check: func(s string) error {
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("%q must be an http:// or https:// URL with a host", s)
			}
			return nil
		},
	}
}

var sha256Checksum = regexp.MustCompile(`^sha256:[0-9a-fA-F]{64}$`)

// checksumFormat checks "sha256:<64 hex digits>".
func checksumFormat() validator.String {
	return stringCheck{
		desc: "must look like `sha256:<64 hex digits>`",
		check: func(s string) error {
			if !sha256Checksum.MatchString(s) {
				return fmt.Errorf("%q must look like sha256:<64 hex digits>", s)
			}
			return nil
		},
	}
}

// diskIDFormat checks a kvm_disk ID "<host>/<pool>/<name>" and the pool and
// volume names inside it.
func diskIDFormat() validator.String {
	return stringCheck{
		desc: "must be a kvm_disk ID `<host>/<pool>/<name>`",
		check: func(s string) error {
			_, pool, name, err := ParseDiskID(s)
			if err != nil {
				return err
			}
			if err := api.ValidateName("pool", pool); err != nil {
				return fmt.Errorf("disk ID %q: %w", s, err)
			}
			if err := api.ValidateName("disk", name); err != nil {
				return fmt.Errorf("disk ID %q: %w", s, err)
			}
			return nil
		},
	}
}
