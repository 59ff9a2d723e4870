package vswitch

import (
	_ "embed"

	"github.com/ovn-kubernetes/libovsdb/model"
)

// schemaJSON is the Open_vSwitch schema shipped with openvswitch-switch
// (/usr/share/openvswitch/vswitch.ovsschema). Only the embedded server needs
// it: against a real ovsdb-server the client fetches the live schema.
//
//go:embed vswitch.ovsschema
var schemaJSON []byte

const dbName = "Open_vSwitch"

// The models carry only the columns kvm-hostd reads or writes; libovsdb
// maps a partial model onto the full schema.

// OpenvSwitch is the root row of the database. ovs-vswitchd copies
// next_cfg to cur_cfg once it has applied the configuration, which is how
// a client waits for the switch to act on a change (as ovs-vsctl does).
type OpenvSwitch struct {
	UUID        string            `ovsdb:"_uuid"`
	Bridges     []string          `ovsdb:"bridges"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
	NextCfg     int               `ovsdb:"next_cfg"`
	CurCfg      int               `ovsdb:"cur_cfg"`
}

// Bridge is an OVS bridge.
type Bridge struct {
	UUID         string            `ovsdb:"_uuid"`
	Name         string            `ovsdb:"name"`
	DatapathType string            `ovsdb:"datapath_type"`
	Ports        []string          `ovsdb:"ports"`
	ExternalIDs  map[string]string `ovsdb:"external_ids"`
}

// Port is a port of a bridge (one interface each, for what we create).
type Port struct {
	UUID        string            `ovsdb:"_uuid"`
	Name        string            `ovsdb:"name"`
	Interfaces  []string          `ovsdb:"interfaces"`
	Tag         *int              `ovsdb:"tag"`
	Trunks      []int             `ovsdb:"trunks"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
}

// Interface is a network device of a port. Error and Ofport are written by
// ovs-vswitchd and tell whether the device could be created.
type Interface struct {
	UUID        string            `ovsdb:"_uuid"`
	Name        string            `ovsdb:"name"`
	Type        string            `ovsdb:"type"`
	Options     map[string]string `ovsdb:"options"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
	MTURequest  *int              `ovsdb:"mtu_request"`
	Error       *string           `ovsdb:"error"`
	Ofport      *int              `ovsdb:"ofport"`
}

// clientModel is the typed view of the Open_vSwitch database.
func clientModel() (model.ClientDBModel, error) {
	return model.NewClientDBModel(dbName, map[string]model.Model{
		"Open_vSwitch": &OpenvSwitch{},
		"Bridge":       &Bridge{},
		"Port":         &Port{},
		"Interface":    &Interface{},
	})
}
