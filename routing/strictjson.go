package routing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// maxJSONDepth bounds the nesting of a JSON body: an app's definition
// nests about 8 deep (headers of a service's response options).
const maxJSONDepth = 32

// DecodeStrict decodes data, one JSON object, into v (a pointer to a
// struct) the strict way a tenant's body needs, which encoding/json alone
// is not: every key is one of v's field names exactly (encoding/json
// matches case-insensitively, so "Services" would replace "services")
// and appears once (encoding/json keeps the last), no value is null
// except where the field takes any JSON value, the object nests at most
// 32 deep, and nothing follows it. Errors start with path and name the
// key: `apps.web.services[0]: field "ports" appears twice`. An empty
// data is an error that wraps io.EOF.
//
// It checks the tokens against v's type first and decodes only a body
// that passed. A value of the wrong type (a string for a number) is
// found by the decoding, which may have filled part of v by then: pass a
// fresh v.
func DecodeStrict(path string, data []byte, v any) error {
	c := jsonChecker{dec: json.NewDecoder(bytes.NewReader(data))}
	c.dec.UseNumber()
	tok, err := c.dec.Token()
	if err == io.EOF {
		return at(path, "%w", io.EOF)
	}
	if err != nil {
		return at(path, "%v", err)
	}
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if tok != json.Delim('{') {
		return at(path, "%s (want an object)", describe(tok))
	}
	if err := c.value(tok, t, path); err != nil {
		return err
	}
	if _, err := c.dec.Token(); err != io.EOF {
		return at(path, "one JSON value expected, more follows")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return at(path, "%v", err)
	}
	return nil
}

// jsonChecker walks the tokens of one JSON value beside a Go type.
type jsonChecker struct {
	dec   *json.Decoder
	depth int
}

var (
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	rawMessageType  = reflect.TypeFor[json.RawMessage]()
)

// value checks the value that begins with tok against t.
func (c *jsonChecker) value(tok json.Token, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if tok == nil {
		if t.Kind() == reflect.Interface {
			return nil
		}
		return at(path, "null (want %s)", want(t))
	}
	if t.Kind() == reflect.Interface || t == rawMessageType || reflect.PointerTo(t).Implements(unmarshalerType) {
		return c.skip(tok, path)
	}
	switch t.Kind() {
	case reflect.Struct:
		if tok != json.Delim('{') {
			return c.skip(tok, path) // encoding/json names the wrong type
		}
		fields := fieldsOf(t)
		return c.object(path, func(key, kp string) (reflect.Type, error) {
			ft, ok := fields[key]
			if !ok {
				for name := range fields {
					if strings.EqualFold(name, key) {
						return nil, at(path, "unknown field %q (field names are case-sensitive: did you mean %q?)", key, name)
					}
				}
				return nil, at(path, "unknown field %q", key)
			}
			return ft, nil
		})
	case reflect.Map:
		if tok != json.Delim('{') {
			return c.skip(tok, path)
		}
		return c.object(path, func(string, string) (reflect.Type, error) { return t.Elem(), nil })
	case reflect.Slice, reflect.Array:
		if tok != json.Delim('[') {
			return c.skip(tok, path) // a []byte's base64 string, or a wrong type
		}
		return c.list(path, t.Elem())
	}
	return c.skip(tok, path) // a scalar, or a wrong type encoding/json names
}

// object checks the members of an object whose '{' was read: each key
// once, each value against the type elem returns for it (nil: any).
func (c *jsonChecker) object(path string, elem func(key, path string) (reflect.Type, error)) error {
	if c.depth++; c.depth > maxJSONDepth {
		return at(path, "nested deeper than %d levels", maxJSONDepth)
	}
	seen := make(map[string]bool)
	for c.dec.More() {
		tok, err := c.token(path)
		if err != nil {
			return err
		}
		key, _ := tok.(string) // the decoder allows strings alone here
		if seen[key] {
			return at(path, "field %q appears twice", key)
		}
		seen[key] = true
		kp := key
		if path != "" {
			kp = path + "." + key
		}
		var t reflect.Type
		if elem != nil {
			if t, err = elem(key, kp); err != nil {
				return err
			}
		}
		if tok, err = c.token(kp); err != nil {
			return err
		}
		if t == nil {
			err = c.skip(tok, kp)
		} else {
			err = c.value(tok, t, kp)
		}
		if err != nil {
			return err
		}
	}
	c.depth--
	_, err := c.token(path) // '}'
	return err
}

// list checks the entries of a list whose '[' was read against elem
// (nil: any).
func (c *jsonChecker) list(path string, elem reflect.Type) error {
	if c.depth++; c.depth > maxJSONDepth {
		return at(path, "nested deeper than %d levels", maxJSONDepth)
	}
	for i := 0; c.dec.More(); i++ {
		ip := path + "[" + strconv.Itoa(i) + "]"
		tok, err := c.token(ip)
		if err != nil {
			return err
		}
		if elem == nil {
			err = c.skip(tok, ip)
		} else {
			err = c.value(tok, elem, ip)
		}
		if err != nil {
			return err
		}
	}
	c.depth--
	_, err := c.token(path) // ']'
	return err
}

// skip reads past the value that begins with tok, whatever it holds,
// still refusing repeated keys and deep nesting in it.
func (c *jsonChecker) skip(tok json.Token, path string) error {
	switch tok {
	case json.Delim('{'):
		return c.object(path, nil)
	case json.Delim('['):
		return c.list(path, nil)
	}
	return nil
}

// token reads the next token; the end of the data is unexpected here.
func (c *jsonChecker) token(path string) (json.Token, error) {
	tok, err := c.dec.Token()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, at(path, "%v", err)
	}
	return tok, nil
}

// at prefixes a message with the path it is about.
func at(path, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	if path == "" {
		return err
	}
	return fmt.Errorf("%s: %w", path, err)
}

// describe names the JSON value that begins with tok.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		if v == '[' {
			return "a list"
		}
		return "an object"
	case string:
		return "a string"
	case bool:
		return strconv.FormatBool(v)
	}
	return "a number"
}

// want names the JSON a value of type t is written as.
func want(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	}
	return "a number"
}

var structFields sync.Map // reflect.Type -> map[string]reflect.Type

// fieldsOf returns the JSON names of a struct's fields, as encoding/json
// spells them (the tag's name, else the Go name), and their types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if m, ok := structFields.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		m[name] = f.Type
	}
	structFields.Store(t, m)
	return m
}
