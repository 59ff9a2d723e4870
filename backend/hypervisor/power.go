package hypervisor

import (
	"context"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// PowerVM brings a domain to a power state (api.PowerRunning, PowerStopped,
// PowerRebooted). Stopping is graceful (ACPI, power-off after the VM's
// shutdown timeout), as for running = false. A reboot is that stop followed
// by a start, so the guest boots afresh whether or not it honours an ACPI
// reboot request, and a stopped domain is simply started. It reports
// whether the domain was restarted, and logs the libvirt domain IDs around
// a restart: a new ID is the one sign of it libvirt's test driver shows.
func (l *Libvirt) PowerVM(ctx context.Context, name, state string) (restarted bool, err error) {
	err = l.withDomain(ctx, name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		restarted = false
		active, err := d.IsActive()
		if err != nil {
			return wrap(err, "state of %s", name)
		}
		x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return wrap(err, "read domain %s", name)
		}
		spec, _ := specOf(x, l.pathRef(c))
		oldID, _ := d.GetID()
		if active && state != api.PowerRunning {
			if err := l.stopDomain(ctx, d, shutdownTimeout(&spec)); err != nil {
				return wrap(err, "stop %s", name)
			}
		}
		if state == api.PowerStopped || (active && state == api.PowerRunning) {
			l.log.Info("vm power", "name", name, "state", state, "was_active", active)
			return nil
		}
		if err := l.ensureSecretsOf(c, d); err != nil {
			return err
		}
		if err := d.Create(); err != nil {
			return l.startErr(d, err, name)
		}
		restarted = active
		newID, _ := d.GetID()
		l.log.Info("vm power", "name", name, "state", state, "was_active", active, "old_domain_id", oldID, "domain_id", newID)
		return nil
	})
	return restarted, err
}
