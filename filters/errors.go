package filters

import (
	"errors"
	"fmt"
	"strings"
)

// FieldError is an invalid config value: Path names the field (dotted,
// with [i] for list items), Msg says what is wrong with it.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Invalid returns a *FieldError for field; format and args say why.
func Invalid(field, format string, args ...any) error {
	return &FieldError{Path: field, Msg: fmt.Sprintf(format, args...)}
}

// Within prefixes the path of err with prefix: a *FieldError's path gets
// prefix in front, any other error becomes a *FieldError at prefix.
func Within(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		p := prefix
		switch {
		case fe.Path == "":
		case strings.HasPrefix(fe.Path, "["):
			p += fe.Path
		default:
			p += "." + fe.Path
		}
		return &FieldError{Path: p, Msg: fe.Msg}
	}
	return &FieldError{Path: prefix, Msg: err.Error()}
}
