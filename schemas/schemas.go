// Package schemas holds the JSON Schemas of the pipeline's wire formats and
// validates messages against them.
//
// The files are the contract with other teams: v1/effect.json is the body of
// a message on effects.<kind>, v1/completion.json the body of a message on
// effects.completed.<kind>, and v1/hasura-event.json the webhook body the
// ingest accepts. A change that could break a reader (a field removed or
// retyped, a value no longer allowed) is a new version directory, never an
// edit of v1.
package schemas

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// FS holds the schema files, by version: "v1/effect.json", ...
//
//go:embed v1/*.json
var FS embed.FS

// The v1 schema files, as paths in [FS].
const (
	EffectV1      = "v1/effect.json"
	CompletionV1  = "v1/completion.json"
	HasuraEventV1 = "v1/hasura-event.json"
)

// baseURL is the prefix of the schemas' $id: each file is registered under
// its $id so that references between them resolve without a network.
const baseURL = "https://github.com/effects-run/effects/schemas/"

// Validator validates messages against the v1 schemas, formats (date-time)
// asserted.
type Validator struct {
	effect, completion, hasuraEvent *jsonschema.Schema
}

// NewValidator compiles the v1 schemas.
func NewValidator() (*Validator, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	paths, err := fs.Glob(FS, "v*/*.json")
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		data, err := FS.ReadFile(p)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("schemas: %s: %w", p, err)
		}
		if err := c.AddResource(baseURL+p, doc); err != nil {
			return nil, fmt.Errorf("schemas: %s: %w", p, err)
		}
	}
	var v Validator
	for _, s := range []struct {
		path string
		dst  **jsonschema.Schema
	}{{EffectV1, &v.effect}, {CompletionV1, &v.completion}, {HasuraEventV1, &v.hasuraEvent}} {
		if *s.dst, err = c.Compile(baseURL + s.path); err != nil {
			return nil, fmt.Errorf("schemas: compile %s: %w", s.path, err)
		}
	}
	return &v, nil
}

// Effect validates the body of a message on effects.<kind>.
func (v *Validator) Effect(data []byte) error { return validate(v.effect, EffectV1, data) }

// Completion validates the body of a message on effects.completed.<kind>.
func (v *Validator) Completion(data []byte) error { return validate(v.completion, CompletionV1, data) }

// HasuraEvent validates a webhook body for the ingest.
func (v *Validator) HasuraEvent(data []byte) error {
	return validate(v.hasuraEvent, HasuraEventV1, data)
}

func validate(s *jsonschema.Schema, name string, data []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: not JSON: %w", name, err)
	}
	if err := s.Validate(inst); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
