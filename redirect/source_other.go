//go:build !linux

package redirect

// AddInboundSource returns ErrUnsupported: it is only available on Linux.
func AddInboundSource() (added bool, err error) { return false, ErrUnsupported }

// RemoveInboundSource returns ErrUnsupported: it is only available on Linux.
func RemoveInboundSource() (removed bool, err error) { return false, ErrUnsupported }

// LoopbackIPv6Enabled returns ErrUnsupported: it is only available on Linux.
func LoopbackIPv6Enabled() (bool, error) { return false, ErrUnsupported }
