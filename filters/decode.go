package filters

import (
	"bytes"
	"cmp"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// DecodeStrict decodes the JSON value data into v, a non-nil pointer, as
// encoding/json would, but strictly, as a config file is read:
//
//   - a key that is not a field of its struct is an error that lists the
//     fields; keys match a field's json name as encoding/json matches them
//     (the exact name first, else regardless of case);
//   - so is a value of the wrong kind (null is never wrong: as with
//     encoding/json it empties a list, a mapping or a pointer, and leaves a
//     struct, a string, a number or a boolean as it is);
//   - so is anything after the value.
//
// Every error is a *FieldError at path and the fields within it
// ("outbound.filters[0].authz.allow[1].methods"). A type with its own
// UnmarshalJSON decodes itself: the path of its *FieldError goes on after
// the field's, and its *json.UnmarshalTypeError says what was wanted. Empty
// data and null leave v as it is. Configs (the Registry's types) are
// decoded with it, and may use it in their own UnmarshalJSON.
func DecodeStrict(data []byte, v any, path string) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || string(data) == "null" {
		return nil
	}
	if !json.Valid(data) { // json's own message: the syntax error, or trailing data
		var x any
		return Invalid(path, "%s", strings.TrimPrefix(json.Unmarshal(data, &x).Error(), "json: "))
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("filters: DecodeStrict into %T: want a non-nil pointer", v)
	}
	return decode(data, rv.Elem(), path)
}

// KindOf names the kind of the JSON value b in the config file's terms:
// string, number, bool, null, list or mapping ("nothing" when b is empty).
func KindOf(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '"':
		return "string"
	case '{':
		return "mapping"
	case '[':
		return "list"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// decode decodes data, a valid JSON value, into v, which is addressable.
func decode(data []byte, v reflect.Value, path string) error {
	if v.Kind() != reflect.Pointer {
		switch v.Addr().Interface().(type) {
		case json.Unmarshaler:
			return ownError(v.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(data), path)
		case encoding.TextUnmarshaler:
			if k := KindOf(data); k != "string" {
				return Invalid(path, "want a string, got %s", k)
			}
			return ownError(json.Unmarshal(data, v.Addr().Interface()), path)
		}
	}
	k := KindOf(data)
	switch v.Kind() {
	case reflect.Pointer:
		if k == "null" {
			v.SetZero()
			return nil
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return decode(data, v.Elem(), path)
	case reflect.Struct:
		return decodeStruct(data, v, path)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.Uint8 { // []byte is base64, as json has it
			return decodeList(data, v, path)
		}
	case reflect.Map:
		if v.Type().Key().Kind() == reflect.String {
			return decodeMap(data, v, path)
		}
	}
	if k == "null" {
		return nil // as encoding/json: the value stays as it is
	}
	want := wanted(v.Type())
	switch v.Kind() {
	case reflect.String:
		k = match(k, "string")
	case reflect.Bool:
		k = match(k, "bool")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		k = match(k, "number")
	default: // any, arrays, maps with other keys: as json decodes them
		return ownError(json.Unmarshal(data, v.Addr().Interface()), path)
	}
	if k != "" {
		return Invalid(path, "want %s, got %s", want, k)
	}
	if err := json.Unmarshal(data, v.Addr().Interface()); err != nil { // out of range, or not whole
		return Invalid(path, "want %s, got %s", want, data)
	}
	return nil
}

// match is "" when the kind got is the kind wanted, else got.
func match(got, want string) string {
	if got == want {
		return ""
	}
	return got
}

func decodeStruct(data []byte, v reflect.Value, path string) error {
	var m map[string]json.RawMessage
	if done, err := open(data, "mapping", reflect.Value{}, path, &m); done {
		return err
	}
	fields := jsonFields(v.Type(), nil)
	for _, key := range slices.Sorted(maps.Keys(m)) {
		i := slices.IndexFunc(fields, func(f jsonField) bool { return f.name == key })
		if i < 0 {
			i = slices.IndexFunc(fields, func(f jsonField) bool { return strings.EqualFold(f.name, key) })
		}
		if i < 0 {
			names := make([]string, len(fields))
			for j, f := range fields {
				names[j] = f.name
			}
			return Invalid(join(path, key), "unknown field (known: %s)", strings.Join(names, ", "))
		}
		if err := decode(m[key], v.FieldByIndex(fields[i].index), join(path, key)); err != nil {
			return err
		}
	}
	return nil
}

func decodeList(data []byte, v reflect.Value, path string) error {
	var items []json.RawMessage
	if done, err := open(data, "list", v, path, &items); done {
		return err
	}
	s := reflect.MakeSlice(v.Type(), len(items), len(items))
	for i, item := range items {
		if err := decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
			return err
		}
	}
	v.Set(s)
	return nil
}

func decodeMap(data []byte, v reflect.Value, path string) error {
	var m map[string]json.RawMessage
	if done, err := open(data, "mapping", v, path, &m); done {
		return err
	}
	out := reflect.MakeMapWithSize(v.Type(), len(m))
	for _, key := range slices.Sorted(maps.Keys(m)) {
		e := reflect.New(v.Type().Elem()).Elem()
		if err := decode(m[key], e, join(path, key)); err != nil {
			return err
		}
		out.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), e)
	}
	v.Set(out)
	return nil
}

// open decodes data, a list or a mapping as kind says, into its items
// (into); done says there is nothing more to decode: data was null, which
// empties v (a struct, given as the zero Value, stays as it is), or err.
func open(data []byte, kind string, v reflect.Value, path string, into any) (done bool, err error) {
	switch k := KindOf(data); k {
	case "null":
		if v.IsValid() {
			v.SetZero()
		}
		return true, nil
	case kind:
		if err := json.Unmarshal(data, into); err != nil {
			return true, Invalid(path, "%s", strings.TrimPrefix(err.Error(), "json: "))
		}
		return false, nil
	default:
		return true, Invalid(path, "want a %s, got %s", kind, k)
	}
}

// jsonField is a struct field as encoding/json names it.
type jsonField struct {
	name  string
	index []int
}

// jsonFields lists the fields of struct type t that encoding/json decodes,
// in order: exported, not tagged "-", those of embedded structs without a
// tag in their place.
func jsonFields(t reflect.Type, at []int) []jsonField {
	var out []jsonField
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		index := append(slices.Clip(at), i)
		switch {
		case f.Tag.Get("json") == "-":
		case f.Anonymous && tag == "" && f.Type.Kind() == reflect.Struct:
			out = append(out, jsonFields(f.Type, index)...)
		case !f.IsExported():
		default:
			out = append(out, jsonField{name: cmp.Or(tag, f.Name), index: index})
		}
	}
	return out
}

// ownError is the error of a type's own UnmarshalJSON (or of json itself)
// as a *FieldError at path.
func ownError(err error, path string) error {
	if err == nil {
		return nil
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		if path == "" {
			return fe
		}
		return Within(path, fe)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return Invalid(join(path, te.Field), "want %s, got %s", wanted(te.Type), te.Value)
	}
	return Invalid(path, "%s", strings.TrimPrefix(err.Error(), "json: "))
}

// wanted says what a value of type t is, in the config file's terms.
func wanted(t reflect.Type) string {
	if t == reflect.TypeFor[Duration]() {
		return `a duration such as "250ms" or "15s"`
	}
	switch t.Kind() {
	case reflect.Pointer:
		return wanted(t.Elem())
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

// join is the path of field within path.
func join(path, field string) string {
	switch {
	case field == "":
		return path
	case path == "":
		return field
	}
	return path + "." + field
}
