package configfile

import (
	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/requestid"
)

// RequestIDName is the requestid filter's name in the config file.
const RequestIDName = "requestid"

// withRequestID applies a chain's `generateRequestId` to its specs (the
// router last), as Envoy's generate_request_id does: a chain that
// generates keeps the request's x-request-id or makes one (a UUID v4), so
// that the application, both sidecars and their access logs share it.
//
//   - The chain lists the requestid filter: it runs where it is listed,
//     with its own header; `generateRequestId: false` beside it is a
//     contradiction, refused naming the field (set is whether the file
//     said generateRequestId at all).
//   - It does not, and generate is true (the outbound default, with no
//     config file too): a requestid filter with its defaults runs first,
//     so that every filter after it sees the ID.
//   - It does not, and generate is false (the inbound default: it keeps
//     what it gets, from the caller's sidecar): the chain is left as it is.
func withRequestID(specs []Spec, dir string, generate, set bool) ([]Spec, error) {
	for _, s := range specs {
		if s.Name != RequestIDName {
			continue
		}
		if set && !generate {
			return nil, filters.Invalid(dir+".generateRequestId", "false, but %s makes request IDs: drop one of the two", s.Path)
		}
		return specs, nil
	}
	if !generate {
		return specs, nil
	}
	implicit := Spec{Name: RequestIDName, Path: dir + "." + RequestIDName, Config: &requestid.Config{}}
	return append([]Spec{implicit}, specs...), nil
}
