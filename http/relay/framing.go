package relay

import (
	"bytes"
	"errors"
)

// ErrFraming is a replica's body whose chunked framing is malformed.
var ErrFraming = errors.New("malformed chunked encoding from the replica")

// maxChunkSize bounds a chunk's declared size, so that a corrupt size line is refused at once.
const maxChunkSize = 1 << 40

// Where a Framing is in a chunked body (RFC 9112 §7.1).
const (
	stSize        = iota // in a chunk-size line, before its first digit: a boundary between chunks
	stSizeDigits         // in the size's digits
	stSizeExt            // after the size: extensions and the line end
	stData               // in a chunk's data
	stDataCR             // after the data: expecting CR
	stDataLF             // expecting LF
	stTrailer            // at the start of a trailer line, or of the final empty line
	stTrailerLine        // in a trailer line
	stTrailerLF          // after the final CR
	stDone               // the body ended
)

// Framing follows a chunked body as its bytes pass through unchanged: it knows where the body ends,
// whether the client has been sent whole chunks only (so that an error event may follow), and counts
// the SSE events in the data.
type Framing struct {
	state  int
	size   int64 // data bytes left in the current chunk, or the size being read
	last   byte  // the data byte before this read, so an event end split across reads still counts
	Events int   // SSE event ends ("\n\n") seen in the data
}

// Scan follows p. It returns how many of p's bytes belong to the body: fewer than len(p) only when
// the body ended within p. After an error nothing more of the body is valid.
func (f *Framing) Scan(p []byte) (int, error) {
	for i := 0; i < len(p); i++ {
		b := p[i]
		switch f.state {
		case stSize, stSizeDigits:
			if v, ok := hexValue(b); ok {
				if f.size = f.size<<4 | int64(v); f.size > maxChunkSize {
					return i, ErrFraming
				}
				f.state = stSizeDigits
				continue
			}
			if f.state == stSize {
				return i, ErrFraming
			}
			f.state = stSizeExt
			i-- // the extension state reads this byte
		case stSizeExt:
			if b != '\n' {
				continue // extensions and CR are ignored, as net/http does
			}
			if f.size == 0 {
				f.state = stTrailer
			} else {
				f.state = stData
			}
		case stData:
			n := int64(len(p) - i)
			if n > f.size {
				n = f.size
			}
			data := p[i : i+int(n)]
			f.Events += CountEvents(data, &f.last)
			f.size -= n
			i += int(n) - 1
			if f.size == 0 {
				f.state = stDataCR
			}
		case stDataCR:
			if b != '\r' {
				return i, ErrFraming
			}
			f.state = stDataLF
		case stDataLF:
			if b != '\n' {
				return i, ErrFraming
			}
			f.state = stSize
		case stTrailer:
			switch b {
			case '\r':
				f.state = stTrailerLF
			case '\n':
				f.state = stDone
				return i + 1, nil
			default:
				f.state = stTrailerLine
			}
		case stTrailerLine:
			if b == '\n' {
				f.state = stTrailer
			}
		case stTrailerLF:
			if b != '\n' {
				return i, ErrFraming
			}
			f.state = stDone
			return i + 1, nil
		case stDone:
			return i, nil
		}
	}
	return len(p), nil
}

// Done reports whether the body ended: its last chunk and trailer went through.
func (f *Framing) Done() bool { return f.state == stDone }

// AtBoundary reports whether the bytes so far end between two chunks, where another chunk may be
// written.
func (f *Framing) AtBoundary() bool { return f.state == stSize }

func hexValue(b byte) (byte, bool) {
	switch {
	case '0' <= b && b <= '9':
		return b - '0', true
	case 'a' <= b && b <= 'f':
		return b - 'a' + 10, true
	case 'A' <= b && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
}

// CountEvents counts SSE event ends ("\n\n") in b, given the byte that came before it; it leaves in
// *last the byte that ends b.
func CountEvents(b []byte, last *byte) int {
	n := 0
	prev := *last
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		if i == 0 && prev == '\n' {
			n++
		}
		prev = '\n'
		b = b[i+1:]
	}
	if len(b) > 0 {
		prev = b[len(b)-1]
	}
	*last = prev
	return n
}
