//go:build !linux

package testpod

// Capture needs Linux packet sockets.
type Capture struct{}

// Segment is one captured TCP segment that carried data.
type Segment struct {
	SrcPort, DstPort uint16
	Payload          []byte
}

// Capture fails t: packet capture needs Linux.
func (n *Node) Capture(t Cleaner) *Capture {
	t.Helper()
	t.Fatalf("testpod: packet capture needs Linux")
	return nil
}

// Stop does nothing.
func (c *Capture) Stop() {}

// Segments returns nothing.
func (c *Capture) Segments(uint16) []Segment { return nil }
