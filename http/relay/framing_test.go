package relay_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"net/http/httputil"
	"net/textproto"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/http/relay"
)

// chunk frames data as one chunk, with a chunk extension ext.
func chunk(data, ext string) string {
	return fmt.Sprintf("%x%s\r\n%s\r\n", len(data), ext, data)
}

// scanInPieces feeds body to a Framing cut at the given offsets and returns how many bytes it took
// and the first error.
func scanInPieces(t *testing.T, body []byte, cuts []int) (*relay.Framing, int, error) {
	t.Helper()
	var f relay.Framing
	taken, prev := 0, 0
	for _, cut := range append(cuts, len(body)) {
		n, err := f.Scan(body[prev:cut])
		taken += n
		if err != nil || n < cut-prev {
			return &f, taken, err
		}
		prev = cut
	}
	return &f, taken, nil
}

// A chunked body of SSE events is followed to its exact end however it is cut into reads, with
// its events counted and its chunk boundaries known.
func TestFramingFollowsAChunkedBodyCutAnywhere(t *testing.T) {
	body := chunk("data: {\"a\":1}\n\n", "") + // one event in one chunk
		chunk("data: {", "") + chunk("\"b\"}\n\n", ";ext=1") + // one event over two chunks, with an extension
		chunk("data: {\"c\":3}\n\ndata: [DONE]\n\n", "") + // two events in one chunk
		"0\r\nX-Trailer: yes\r\n\r\n"
	next := "POST /next HTTP/1.1\r\n" // what follows the body on a kept connection
	wire := []byte(body + next)
	for cut := 0; cut <= len(wire); cut++ {
		f, n, err := scanInPieces(t, wire, []int{cut})
		require.NoError(t, err, "cut at %d", cut)
		require.True(t, f.Done(), "cut at %d", cut)
		require.Equal(t, len(body), n, "cut at %d: the body's end", cut)
		require.Equal(t, 4, f.Events, "cut at %d", cut)
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 500; i++ {
		var cuts []int
		for c := 0; c < len(wire); c += 1 + rng.Intn(6) {
			cuts = append(cuts, c)
		}
		f, n, err := scanInPieces(t, wire, cuts)
		require.NoError(t, err)
		require.True(t, f.Done())
		require.Equal(t, len(body), n)
		require.Equal(t, 4, f.Events)
	}
}

// AtBoundary is true exactly where a whole number of chunks has gone through.
func TestFramingAtBoundaryOnlyBetweenChunks(t *testing.T) {
	wire := []byte("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
	boundaries := map[int]bool{0: true, 8: true, 15: true}
	var f relay.Framing
	for i := range wire {
		require.Equal(t, boundaries[i], f.AtBoundary(), "after %d bytes", i)
		n, err := f.Scan(wire[i : i+1])
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	require.True(t, f.Done())
	require.False(t, f.AtBoundary())
}

// Malformed framing is refused where it goes wrong.
func TestFramingRefusesMalformedChunks(t *testing.T) {
	for _, wire := range []string{
		"x\r\n",                // not a size
		"\r\n",                 // an empty size
		"3\r\nabcX\r\n",        // no CRLF after the data
		"3\r\nabc\rX",          // CR without LF
		"3\r\nabc\r\n0\r\n\rX", // a bad final line end
		"fffffffffffffff\r\n",  // an absurd size
		"-1\r\n",               // a sign
	} {
		_, _, err := scanInPieces(t, []byte(wire), nil)
		require.ErrorIs(t, err, relay.ErrFraming, "%q", wire)
	}
}

// FuzzFramingAgreesWithNetHTTP: wherever net/http's chunked reader reads a whole body (chunks and
// trailer), Framing ends the body at the same byte with the same data.
func FuzzFramingAgreesWithNetHTTP(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("e\r\ndata: {\"a\":1}\n\n\r\n0\r\nA: b\r\n\r\nrest"))
	f.Add([]byte("3;x=y\r\nabc\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, wire []byte) {
		br := bufio.NewReader(bytes.NewReader(wire))
		if _, err := io.ReadAll(httputil.NewChunkedReader(br)); err != nil {
			return
		}
		if _, err := textproto.NewReader(br).ReadMIMEHeader(); err != nil {
			return
		}
		end := len(wire) - br.Buffered()
		var fr relay.Framing
		n, err := fr.Scan(wire)
		require.NoError(t, err, "%q", wire)
		require.True(t, fr.Done(), "%q", wire)
		require.Equal(t, end, n, "%q", wire)
	})
}

// An event end split between two reads is counted once.
func TestCountEventsAcrossReads(t *testing.T) {
	var last byte
	require.Equal(t, 0, relay.CountEvents([]byte("data: a\n"), &last))
	require.Equal(t, 2, relay.CountEvents([]byte("\ndata: b\n\nda"), &last))
	require.Equal(t, 1, relay.CountEvents([]byte("ta: c\n\n"), &last))
}
