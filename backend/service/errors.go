package service

import (
	"errors"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func asAPIError(err error) (*api.Error, bool) {
	var e *api.Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}
