package hypervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// InspectVolume reads what an image file really is, from its own header
// (qemu-img info), not from libvirt's storage pool, which reports the
// volume as created. kvm-hostd inspects every fetched or copied image
// before it becomes usable: a file whose header says qcow2 with a backing
// file /etc/shadow must never become a disk.
func (l *Libvirt) InspectVolume(ctx context.Context, pool, name string) (service.ImageInfo, error) {
	v, err := l.GetVolume(ctx, pool, name)
	if err != nil {
		return service.ImageInfo{}, err
	}
	if l.test {
		// The test driver's volumes are not files; they are what they
		// were created as.
		return service.ImageInfo{Format: v.Format}, nil
	}
	if !isFilePath(v.Path) {
		// An rbd image is raw. One being filled is checked as the image
		// staged for it, which QEMU converts to raw on import: what
		// matters is that it names no other file.
		info := service.ImageInfo{Format: api.FormatRaw}
		var staged string
		_ = l.do(ctx, func(c *libvirt.Connect) error { staged = stagedPath(c, name); return nil })
		if staged != "" {
			si, err := inspectImage(ctx, staged)
			if err != nil {
				return info, err
			}
			info.BackingFile, info.BackingFormat, info.DataFile = si.BackingFile, si.BackingFormat, si.DataFile
		}
		return info, nil
	}
	return inspectImage(ctx, v.Path)
}

// inspectImage runs qemu-img info on path. -U: the file may be open
// elsewhere (never by a guest, for a volume being filled).
func inspectImage(ctx context.Context, path string) (service.ImageInfo, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
			msg = string(ee.Stderr)
		}
		return service.ImageInfo{}, fmt.Errorf("inspecting image %s: %s", path, msg)
	}
	var info struct {
		Format          string `json:"format"`
		BackingFilename string `json:"backing-filename"`
		BackingFormat   string `json:"backing-filename-format"`
		FormatSpecific  struct {
			Data struct {
				DataFile string `json:"data-file"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return service.ImageInfo{}, fmt.Errorf("inspecting image %s: %v", path, err)
	}
	return service.ImageInfo{Format: info.Format, BackingFile: info.BackingFilename, BackingFormat: info.BackingFormat,
		DataFile: info.FormatSpecific.Data.DataFile}, nil
}
