package server

import (
	"net/http"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func (s *Server) powerVM(r *http.Request) (int, any, error) {
	var req api.PowerRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	auditParam(r, "state", req.State)
	vm, err := s.svc.PowerVM(r.Context(), r.PathValue("name"), req)
	return http.StatusOK, vm, err
}
