package proxy

import (
	"sync/atomic"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/sniff"
)

// Direction is which listener a connection came in on; the filters see
// the same type.
type Direction = filters.Direction

// The two directions of captured traffic.
const (
	Outbound = filters.Outbound // the application calling out
	Inbound  = filters.Inbound  // a peer calling the application
)

// Stats counts what the proxy did. Its fields are updated atomically while
// the proxy runs; read them with Load.
type Stats struct {
	Dir [2]DirStats // indexed by Direction
}

// DirStats are the counters of one direction.
type DirStats struct {
	Accepted     atomic.Int64 // connections accepted on the listener
	Active       atomic.Int64 // connections being proxied now
	Completed    atomic.Int64 // relays that ended, cleanly or not
	OverLimit    atomic.Int64 // refused: MaxConnections reached
	Loops        atomic.Int64 // refused: original destination is one of our listeners
	NoOrigDst    atomic.Int64 // refused: original destination unreadable
	DialFailures atomic.Int64 // upstream connect failed or timed out
	BytesSent    atomic.Int64 // downstream → upstream
	BytesRecv    atomic.Int64 // upstream → downstream
	Requests     atomic.Int64 // HTTP requests received

	// Detected counts connections by the protocol they were detected to
	// carry (indexed by sniff.Protocol); a connection on an opaque port
	// counts as Opaque.
	Detected      [4]atomic.Int64
	SniffTimeouts atomic.Int64 // detection gave up waiting: forwarded as opaque
	// HeaderTimeouts counts HTTP connections closed because a request's
	// headers did not arrive within HeaderTimeout.
	HeaderTimeouts atomic.Int64

	// MTLS counts connections between sidecars whose handshake completed:
	// inbound, accepted from a peer; outbound, made to one.
	MTLS atomic.Int64
	// TLSFailures counts failed mTLS handshakes by why (indexed by
	// mtls.Failure).
	TLSFailures [mtls.NumFailures]atomic.Int64
	// Plaintext counts inbound connections that were not mTLS from a peer
	// sidecar, passed to the application (mesh.mode PERMISSIVE);
	// PlaintextRefused those refused (STRICT). Both zero without mTLS.
	Plaintext, PlaintextRefused atomic.Int64
	// Denied counts opaque mTLS connections the inbound chain refused
	// (authz).
	Denied atomic.Int64
}

// Snapshot is a plain copy of one direction's counters.
type Snapshot struct {
	Accepted, Active, Completed, OverLimit, Loops, NoOrigDst, DialFailures, BytesSent, BytesRecv, Requests int64
	Detected                                                                                               map[string]int64 // by protocol name
	SniffTimeouts, HeaderTimeouts                                                                          int64
	MTLS, Plaintext, PlaintextRefused, Denied                                                              int64
	TLSFailures                                                                                            map[string]int64 // by mtls.Failure name, only those not zero
}

// Load returns a copy of d's counters. The fields are read one by one, not
// as one atomic snapshot.
func (d *DirStats) Load() Snapshot {
	return Snapshot{
		Accepted:     d.Accepted.Load(),
		Active:       d.Active.Load(),
		Completed:    d.Completed.Load(),
		OverLimit:    d.OverLimit.Load(),
		Loops:        d.Loops.Load(),
		NoOrigDst:    d.NoOrigDst.Load(),
		DialFailures: d.DialFailures.Load(),
		BytesSent:    d.BytesSent.Load(),
		BytesRecv:    d.BytesRecv.Load(),
		Requests:     d.Requests.Load(),
		Detected: map[string]int64{
			sniff.Opaque.String(): d.Detected[sniff.Opaque].Load(),
			sniff.HTTP1.String():  d.Detected[sniff.HTTP1].Load(),
			sniff.HTTP2.String():  d.Detected[sniff.HTTP2].Load(),
			sniff.TLS.String():    d.Detected[sniff.TLS].Load(),
		},
		SniffTimeouts:    d.SniffTimeouts.Load(),
		HeaderTimeouts:   d.HeaderTimeouts.Load(),
		MTLS:             d.MTLS.Load(),
		Plaintext:        d.Plaintext.Load(),
		PlaintextRefused: d.PlaintextRefused.Load(),
		Denied:           d.Denied.Load(),
		TLSFailures:      tlsFailures(&d.TLSFailures),
	}
}

func tlsFailures(counts *[mtls.NumFailures]atomic.Int64) map[string]int64 {
	m := map[string]int64{}
	for i := range counts {
		if n := counts[i].Load(); n > 0 {
			m[mtls.Failure(i).String()] = n
		}
	}
	return m
}
