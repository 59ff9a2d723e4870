package kvm

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
)

// int64Check is a knownvalue.Check on a number with a predicate.
type int64Pred struct {
	ok   func(int64) bool
	desc string
}

func int64Check(ok func(int64) bool, desc string) knownvalue.Check { return int64Pred{ok, desc} }

func (c int64Pred) CheckValue(v any) error {
	n, ok := v.(json.Number)
	if !ok {
		return fmt.Errorf("expected a number, got %T", v)
	}
	i, err := n.Int64()
	if err != nil {
		return err
	}
	if !c.ok(i) {
		return fmt.Errorf("value %d is not %s", i, c.desc)
	}
	return nil
}

func (c int64Pred) String() string { return c.desc }
