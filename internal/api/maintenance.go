package api

// Maintenance is the body of PUT /v1/host/maintenance and its answer.
type Maintenance struct {
	// Enabled puts the host into maintenance (true) or takes it out.
	Enabled bool `json:"enabled"`
	// Reason is a free-text note shown in the host's inventory, e.g. a
	// ticket number; at most MaxMaintenanceReasonLen bytes.
	Reason string `json:"reason,omitempty"`
}

// MaxMaintenanceReasonLen bounds Maintenance.Reason.
const MaxMaintenanceReasonLen = 256
