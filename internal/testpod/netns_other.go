//go:build !linux

package testpod

import "errors"

// inNetNS needs Linux network namespaces.
func inNetNS(string, func() error) error {
	return errors.New("testpod: network namespaces need Linux")
}
