package kvm

import (
	"context"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	dsschema "github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	rschema "github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// The data sources kvm_vm and kvm_disk expose what their resources expose.
// Rather than a second, hand-kept copy of those schemas (which would drift
// as attributes are added), each data source schema is derived from its
// resource's: every attribute becomes computed, except the lookup keys;
// write-only attributes, blocks (timeouts) and what only steers the
// provider (listed per data source) are left out. Values are the
// resource's state as an import would read it, filtered the same way.

// dataSourceAttributes converts resource attributes into computed data
// source attributes. required names the lookup keys; skip names attributes
// (by dotted path from the root) to leave out.
func dataSourceAttributes(attrs map[string]rschema.Attribute, prefix string, required, skip map[string]bool) map[string]dsschema.Attribute {
	out := map[string]dsschema.Attribute{}
	for name, a := range attrs {
		p := prefix + name
		if skip[p] || a.IsWriteOnly() {
			continue
		}
		req := required[p]
		desc := a.GetMarkdownDescription()
		sens := a.IsSensitive()
		switch a := a.(type) {
		case rschema.StringAttribute:
			out[name] = dsschema.StringAttribute{MarkdownDescription: desc, Required: req, Computed: !req, Sensitive: sens}
		case rschema.Int64Attribute:
			out[name] = dsschema.Int64Attribute{MarkdownDescription: desc, Computed: true, Sensitive: sens}
		case rschema.Int32Attribute:
			out[name] = dsschema.Int32Attribute{MarkdownDescription: desc, Computed: true, Sensitive: sens}
		case rschema.Float64Attribute:
			out[name] = dsschema.Float64Attribute{MarkdownDescription: desc, Computed: true, Sensitive: sens}
		case rschema.NumberAttribute:
			out[name] = dsschema.NumberAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens}
		case rschema.BoolAttribute:
			out[name] = dsschema.BoolAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens}
		case rschema.ListAttribute:
			out[name] = dsschema.ListAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens, ElementType: a.ElementType}
		case rschema.SetAttribute:
			out[name] = dsschema.SetAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens, ElementType: a.ElementType}
		case rschema.MapAttribute:
			out[name] = dsschema.MapAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens, ElementType: a.ElementType}
		case rschema.SingleNestedAttribute:
			out[name] = dsschema.SingleNestedAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens,
				Attributes: dataSourceAttributes(a.Attributes, p+".", required, skip)}
		case rschema.ListNestedAttribute:
			out[name] = dsschema.ListNestedAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens,
				NestedObject: dsschema.NestedAttributeObject{Attributes: dataSourceAttributes(a.NestedObject.Attributes, p+".", required, skip)}}
		case rschema.SetNestedAttribute:
			out[name] = dsschema.SetNestedAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens,
				NestedObject: dsschema.NestedAttributeObject{Attributes: dataSourceAttributes(a.NestedObject.Attributes, p+".", required, skip)}}
		case rschema.MapNestedAttribute:
			out[name] = dsschema.MapNestedAttribute{MarkdownDescription: desc, Computed: true, Sensitive: sens,
				NestedObject: dsschema.NestedAttributeObject{Attributes: dataSourceAttributes(a.NestedObject.Attributes, p+".", required, skip)}}
		default:
			// A new attribute kind must be added above; failing loudly
			// beats a data source that silently lacks it.
			panic(fmt.Sprintf("data source schema: attribute %s has unsupported type %T", p, a))
		}
	}
	return out
}

// dataSourceValue reshapes a resource state value v into the data source
// attribute a: nested objects lose the attributes a does not have.
func dataSourceValue(ctx context.Context, v attr.Value, a dsschema.Attribute) (attr.Value, diag.Diagnostics) {
	switch a := a.(type) {
	case dsschema.SingleNestedAttribute:
		return dataSourceObject(ctx, v, a.Attributes)
	case dsschema.ListNestedAttribute:
		l, ok := v.(types.List)
		return dataSourceElems(ctx, ok, l.IsNull(), l.IsUnknown(), l.Elements(), a.NestedObject.Attributes, func(t attr.Type, el []attr.Value) (attr.Value, diag.Diagnostics) {
			if el == nil {
				return types.ListNull(t), nil
			}
			return types.ListValue(t, el)
		})
	case dsschema.SetNestedAttribute:
		s, ok := v.(types.Set)
		return dataSourceElems(ctx, ok, s.IsNull(), s.IsUnknown(), s.Elements(), a.NestedObject.Attributes, func(t attr.Type, el []attr.Value) (attr.Value, diag.Diagnostics) {
			if el == nil {
				return types.SetNull(t), nil
			}
			return types.SetValue(t, el)
		})
	case dsschema.MapNestedAttribute:
		m, ok := v.(types.Map)
		if !ok {
			break
		}
		t := dsschema.NestedAttributeObject{Attributes: a.NestedObject.Attributes}.Type()
		if m.IsNull() || m.IsUnknown() {
			return types.MapNull(t), nil
		}
		var diags diag.Diagnostics
		el := map[string]attr.Value{}
		for k, e := range m.Elements() {
			o, d := dataSourceObject(ctx, e, a.NestedObject.Attributes)
			diags.Append(d...)
			el[k] = o
		}
		mv, d := types.MapValue(t, el)
		diags.Append(d...)
		return mv, diags
	default:
		return v, nil
	}
	var diags diag.Diagnostics
	diags.AddError("Unexpected State Value", fmt.Sprintf("a %T where a nested attribute was expected; please report this issue", v))
	return v, diags
}

func dataSourceElems(ctx context.Context, ok, null, unknown bool, elems []attr.Value, attrs map[string]dsschema.Attribute,
	mk func(attr.Type, []attr.Value) (attr.Value, diag.Diagnostics)) (attr.Value, diag.Diagnostics) {
	var diags diag.Diagnostics
	t := dsschema.NestedAttributeObject{Attributes: attrs}.Type()
	if !ok {
		diags.AddError("Unexpected State Value", "a nested collection was expected; please report this issue")
		return nil, diags
	}
	if null || unknown {
		return mk(t, nil)
	}
	out := make([]attr.Value, 0, len(elems))
	for _, e := range elems {
		o, d := dataSourceObject(ctx, e, attrs)
		diags.Append(d...)
		out = append(out, o)
	}
	v, d := mk(t, out)
	diags.Append(d...)
	return v, diags
}

func dataSourceObject(ctx context.Context, v attr.Value, attrs map[string]dsschema.Attribute) (attr.Value, diag.Diagnostics) {
	var diags diag.Diagnostics
	t := map[string]attr.Type{}
	for name, a := range attrs {
		t[name] = a.GetType()
	}
	o, ok := v.(types.Object)
	if !ok {
		diags.AddError("Unexpected State Value", fmt.Sprintf("a %T where an object was expected; please report this issue", v))
		return types.ObjectNull(t), diags
	}
	if o.IsNull() || o.IsUnknown() {
		return types.ObjectNull(t), nil
	}
	vals := map[string]attr.Value{}
	have := o.Attributes()
	for name, a := range attrs {
		nv, d := dataSourceValue(ctx, have[name], a)
		diags.Append(d...)
		vals[name] = nv
	}
	ov, d := types.ObjectValue(t, vals)
	diags.Append(d...)
	return ov, diags
}

// setDataSourceState copies a resource state into the data source state,
// attribute by attribute, reshaped to the data source's schema.
func setDataSourceState(ctx context.Context, from tfsdk.State, to *tfsdk.State, schema dsschema.Schema) diag.Diagnostics {
	var diags diag.Diagnostics
	var obj types.Object
	diags.Append(from.Get(ctx, &obj)...)
	if diags.HasError() {
		return diags
	}
	have := obj.Attributes()
	for name, a := range schema.Attributes {
		v, d := dataSourceValue(ctx, have[name], a)
		diags.Append(d...)
		if d.HasError() {
			continue
		}
		diags.Append(to.SetAttribute(ctx, path.Root(name), v)...)
	}
	return diags
}
