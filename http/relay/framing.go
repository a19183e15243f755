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
	tail   Tail
	Events int // SSE event ends ("\n\n") seen in the data

	// After a Scan: safe is how many of its bytes end at the last chunk end in them, or at the
	// end of the last chunk's data when its line end has not come (0: neither), safeTail the data's
	// tail there, and safeOpen whether it is the latter. A point where the data ends inside a line
	// is not safe: a replica failing before the line's end would leave the client half a line
	// that no error event can follow.
	safe     int
	safeTail Tail
	safeOpen bool
}

// Scan follows p. It returns how many of p's bytes belong to the body: fewer than len(p) only when
// the body ended within p. After an error nothing more of the body is valid.
func (f *Framing) Scan(p []byte) (int, error) {
	f.safe, f.safeTail, f.safeOpen = 0, f.tail, false
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
			f.tail.Add(data)
			f.size -= n
			i += int(n) - 1
			if f.size == 0 {
				f.state = stDataCR
				// A replica may send a chunk's line end only with the next chunk: its data
				// must not wait for it.
				f.markSafe(i+1, true)
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
			f.markSafe(i+1, false)
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

// markSafe records end as the last safe point of this Scan (open: before its chunk's line end),
// unless the data ends inside a line there.
func (f *Framing) markSafe(end int, open bool) {
	if !f.tail.inLine() {
		f.safe, f.safeTail, f.safeOpen = end, f.tail, open
	}
}

// Done reports whether the body ended: its last chunk and trailer went through.
func (f *Framing) Done() bool { return f.state == stDone }

// AtBoundary reports whether the bytes so far end between two chunks, where another chunk may be
// written.
func (f *Framing) AtBoundary() bool { return f.state == stSize }

// Safe returns how many bytes of the last Scan can go to the client now, up to the last chunk end
// in them or the end of the last chunk's data (0 when neither) where the data does not end inside
// a line, and where the data stood there (MidLine before a chunk's line end: no chunk can follow
// yet).
func (f *Framing) Safe() (int, LineState) {
	if f.safeOpen {
		return f.safe, MidLine
	}
	return f.safe, f.safeTail.Line()
}

// Line returns where the data stands after everything scanned.
func (f *Framing) Line() LineState { return f.tail.Line() }

// LineState is where an SSE stream's data stands: what may be written after it.
type LineState int

const (
	// EventEnd: nothing yet, or an event just ended: another event may follow.
	EventEnd LineState = iota
	// LineEnd: a whole line of an event that has not ended: a blank line must end it first.
	LineEnd
	// MidLine: inside a line: nothing can follow without corrupting it.
	MidLine
)

// Tail follows the last three bytes of a stream's data, to tell where the data stands.
type Tail struct{ b uint32 }

// Add follows p.
func (t *Tail) Add(p []byte) {
	if len(p) >= 3 {
		p = p[len(p)-3:]
		t.b = 0
	}
	for _, c := range p {
		t.b = (t.b<<8 | uint32(c)) & 0xFFFFFF
	}
}

// Line returns where the data followed so far stands.
func (t Tail) Line() LineState {
	switch {
	case t.b == 0, t.b&0xFFFF == 0x0A0A, t.b == 0x0A0D0A: // nothing, "\n\n", "\n\r\n"
		return EventEnd
	case t.b&0xFF == 0x0A:
		return LineEnd
	}
	return MidLine
}

// inLine reports whether the data followed so far ends inside a line. A CR is taken as a line end
// (SSE allows CR alone), so a stream with CR line ends is never held; its LF may still follow, so
// Line says MidLine there.
func (t Tail) inLine() bool { return t.Line() == MidLine && t.b&0xFF != '\r' }

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
