package mtls

import (
	"errors"
	"fmt"
	"io"
	"slices"
)

// The parts of TLS (RFC 8446 §4.1.2, §5.1; RFC 7301) that ReadHello reads.
const (
	recordHeaderLen     = 5
	recordTypeHandshake = 22
	// maxRecordLen is the longest record body accepted: TLSPlaintext is at
	// most 2^14 bytes; crypto/tls accepts up to 2^14+2048 (its ciphertext
	// bound) before it decides, and so does ReadHello.
	maxRecordLen      = 1<<14 + 2048
	typeClientHello   = 1
	handshakeHeaderLn = 4
	// maxHelloLen is crypto/tls's bound on a handshake message.
	maxHelloLen   = 1 << 16
	extensionALPN = 16
	firstRead     = 2 << 10 // a ClientHello with a post-quantum key share fits
)

// errNotHello is what ReadHello wraps when the bytes are not a ClientHello.
var errNotHello = errors.New("not a TLS ClientHello")

// ReadHello reads a TLS ClientHello from r and reports whether it offers
// one of the protocols of Protos, that is whether the connection is from a
// peer sidecar. It returns every byte it read, which the caller must hand
// on first (to the real handshake, or to the application). The caller
// bounds the time it takes with a deadline on the connection r reads.
//
// It parses the records and the message itself, reading the whole
// ClientHello and no further than its last record (a first read may take
// more, which is returned with the rest): no handshake state, no buffers
// beyond the bytes read, nothing written.
func ReadHello(r io.Reader) (mesh bool, read []byte, err error) {
	h := helloReader{r: r, buf: make([]byte, 0, firstRead)}
	msg, err := h.message()
	if err != nil {
		return false, h.buf, err
	}
	protos, err := offeredProtos(msg)
	if err != nil {
		return false, h.buf, fmt.Errorf("mtls: %w: %w", errNotHello, err)
	}
	for _, p := range protos {
		if slices.Contains(Protos(), p) {
			return true, h.buf, nil
		}
	}
	return false, h.buf, nil
}

// helloReader gathers the handshake records of a ClientHello.
type helloReader struct {
	r   io.Reader
	buf []byte // every byte read
}

// fill reads until buf holds at least n bytes.
func (h *helloReader) fill(n int) error {
	for len(h.buf) < n {
		if len(h.buf) == cap(h.buf) {
			h.buf = slices.Grow(h.buf, n-len(h.buf))
		}
		m, err := h.r.Read(h.buf[len(h.buf):cap(h.buf)])
		h.buf = h.buf[:len(h.buf)+m]
		if err != nil && len(h.buf) < n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("mtls: reading the ClientHello: %w", err)
		}
	}
	return nil
}

// message returns the ClientHello's body, gathered from as many handshake
// records as it spans.
func (h *helloReader) message() ([]byte, error) {
	var msg []byte
	for off := 0; ; {
		if err := h.fill(off + recordHeaderLen); err != nil {
			return nil, err
		}
		hdr := h.buf[off : off+recordHeaderLen]
		if hdr[0] != recordTypeHandshake {
			return nil, fmt.Errorf("mtls: %w: record type %d", errNotHello, hdr[0])
		}
		n := int(hdr[3])<<8 | int(hdr[4])
		if n == 0 || n > maxRecordLen { // crypto/tls refuses an empty handshake record too
			return nil, fmt.Errorf("mtls: %w: record of %d bytes", errNotHello, n)
		}
		off += recordHeaderLen
		if err := h.fill(off + n); err != nil {
			return nil, err
		}
		// One record is the common case: its body is the message, no copy.
		if msg == nil {
			msg = h.buf[off : off+n : off+n]
		} else {
			msg = append(msg, h.buf[off:off+n]...)
		}
		off += n
		if len(msg) < handshakeHeaderLn {
			continue
		}
		if msg[0] != typeClientHello {
			return nil, fmt.Errorf("mtls: %w: handshake message type %d", errNotHello, msg[0])
		}
		l := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if l > maxHelloLen {
			return nil, fmt.Errorf("mtls: %w: %d bytes", errNotHello, l)
		}
		if len(msg) >= handshakeHeaderLn+l {
			return msg[handshakeHeaderLn : handshakeHeaderLn+l], nil
		}
	}
}

// offeredProtos returns the ALPN protocols a ClientHello body offers.
func offeredProtos(b []byte) ([]string, error) {
	s := bytesReader(b)
	// legacy_version, random, session id, cipher suites, compression.
	if !s.skip(2+32) || !s.skipVec(1) || !s.skipVec(2) || !s.skipVec(1) {
		return nil, errors.New("truncated before the extensions")
	}
	if len(s) == 0 {
		return nil, nil // no extensions at all
	}
	exts, ok := s.vec(2)
	if !ok {
		return nil, errors.New("truncated extensions")
	}
	for len(exts) > 0 {
		typ, ok1 := exts.uint16()
		body, ok2 := exts.vec(2)
		if !ok1 || !ok2 {
			return nil, errors.New("truncated extension")
		}
		if typ != extensionALPN {
			continue
		}
		list, ok := body.vec(2)
		if !ok || len(body) != 0 || len(list) == 0 {
			return nil, errors.New("malformed ALPN extension")
		}
		var protos []string
		for len(list) > 0 {
			p, ok := list.vec(1)
			if !ok || len(p) == 0 {
				return nil, errors.New("malformed ALPN protocol name")
			}
			protos = append(protos, string(p))
		}
		return protos, nil
	}
	return nil, nil
}

// bytesReader reads the big-endian, length-prefixed fields of TLS.
type bytesReader []byte

func (s *bytesReader) skip(n int) bool {
	if len(*s) < n {
		return false
	}
	*s = (*s)[n:]
	return true
}

func (s *bytesReader) uint16() (uint16, bool) {
	if len(*s) < 2 {
		return 0, false
	}
	v := uint16((*s)[0])<<8 | uint16((*s)[1])
	*s = (*s)[2:]
	return v, true
}

// vec reads a vector whose length is lenBytes (1 or 2) long.
func (s *bytesReader) vec(lenBytes int) (bytesReader, bool) {
	if len(*s) < lenBytes {
		return nil, false
	}
	n := int((*s)[0])
	if lenBytes == 2 {
		n = n<<8 | int((*s)[1])
	}
	if len(*s) < lenBytes+n {
		return nil, false
	}
	v := (*s)[lenBytes : lenBytes+n]
	*s = (*s)[lenBytes+n:]
	return v, true
}

func (s *bytesReader) skipVec(lenBytes int) bool {
	_, ok := s.vec(lenBytes)
	return ok
}
