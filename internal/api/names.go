package api

import (
	"fmt"
	"regexp"
	"strings"
)

// MaxNameLength bounds every object name (volumes, domains, snapshots,
// networks). libvirt and OVS accept longer names, but a bounded length keeps
// paths, port names and log lines sane.
const MaxNameLength = 64

// namePattern is deliberately strict: it excludes "/", "..", whitespace,
// NUL, control characters and XML metacharacters, so a name is safe as a file
// name, an XML text node, an OVS bridge suffix and a URL path segment.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// ValidateName reports why name is not an acceptable object name, or nil.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name must not be empty", kind)
	case len(name) > MaxNameLength:
		return fmt.Errorf("%s name is %d characters long; at most %d are allowed", kind, len(name), MaxNameLength)
	case !namePattern.MatchString(name) || containsDotDot(name):
		return fmt.Errorf("%s name %q is invalid: use letters, digits, '.', '_' and '-', starting with a letter or digit, without '..'", kind, name)
	case volumeKinds[kind] && strings.HasSuffix(name, SeedVolumeSuffix):
		return fmt.Errorf("%s name %q is reserved: names ending in %q are the hosts' cloud-init seed images", kind, name, SeedVolumeSuffix)
	}
	return nil
}

// SeedVolumeSuffix ends the file name of every VM's cloud-init seed image
// (<vm>-cidata.iso) in its pool. Volume names with it are refused, so a
// user volume can neither overwrite a seed nor delete one in use.
const SeedVolumeSuffix = "-cidata.iso"

// volumeKinds are the kinds ValidateName is called with for storage
// volumes (the provider says "disk").
var volumeKinds = map[string]bool{"volume": true, "disk": true, "base volume": true}

// NamePatternDescription is shown in schema descriptions.
const NamePatternDescription = "1-64 characters: letters, digits, `.`, `_` and `-`, starting with a letter or digit, no `..`"

func containsDotDot(s string) bool {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == '.' && s[i+1] == '.' {
			return true
		}
	}
	return false
}
