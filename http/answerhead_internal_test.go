package http

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// answerSeeds are replica answers: the plain heads parseWholeHead takes, and the ones it must leave
// to http.ReadResponse (other versions and statuses, chunked or unframed bodies, Connection,
// duplicate or odd lengths, folded lines, stray control bytes, a head not yet whole).
var answerSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 13:08:52 GMT\r\nserver: uvicorn\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\nhello",
	"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 503\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\nX-Empty:\r\nX-Tab:\t v \t\r\n\r\nabc",
	"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra",
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n",
	"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nX-Bad: a\nb\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200OK\r\nContent-Length: 2\r\n\r\n{}",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
	"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
	"HTTP/1.1 200 \n\r\nContent-Length:0\r\n\r\n",
	"",
}

// readBoth reads answer with parseWholeHead and with http.ReadResponse, each from its own buffer
// holding all of answer, and returns both (fast is nil when parseWholeHead left it).
func readBoth(t *testing.T, answer string) (fast *http.Response, fastBody string, fastErr error, std *http.Response, stdBody string, stdErr error) {
	t.Helper()
	br := bufio.NewReaderSize(strings.NewReader(answer), 4096)
	br.Peek(len(answer)) // the whole answer in the buffer, as after one read from the socket
	if a := parseWholeHead(br); a != nil {
		a.Header = wholeHeader(a.pooled.lines, a.values[:0])
		fast = &a.Response
		b, err := io.ReadAll(fast.Body)
		fastBody, fastErr = string(b), err
	} else {
		rest, _ := io.ReadAll(br)
		require.Equal(t, answer, string(rest), "a head it leaves must stay unread")
	}
	std, stdErr = http.ReadResponse(bufio.NewReader(strings.NewReader(answer)), nil)
	if stdErr == nil {
		b, err := io.ReadAll(std.Body)
		stdBody, stdErr = string(b), err
	}
	return
}

// Whatever head parseWholeHead takes, net/http reads the same: status, headers, length, body, and
// the same error for a body cut short; the plain heads replicas send are taken.
func TestParseWholeHeadReadsAsNetHTTP(t *testing.T) {
	taken := 0
	for _, answer := range answerSeeds {
		fast, fastBody, fastErr, std, stdBody, stdErr := readBoth(t, answer)
		if fast == nil {
			continue
		}
		taken++
		require.NotNil(t, std, "%q: net/http refuses what parseWholeHead takes: %v", answer, stdErr)
		require.Equal(t, std.Status, fast.Status, answer)
		require.Equal(t, std.StatusCode, fast.StatusCode, answer)
		require.Equal(t, std.Header, fast.Header, answer)
		require.Equal(t, std.ContentLength, fast.ContentLength, answer)
		require.Equal(t, std.Close, fast.Close, answer)
		require.Equal(t, stdBody, fastBody, answer)
		require.Equal(t, stdErr, fastErr, answer)
	}
	require.Equal(t, 6, taken, "the plain heads")
}

func FuzzParseWholeHead(f *testing.F) {
	for _, s := range answerSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, answer string) {
		fast, fastBody, fastErr, std, stdBody, stdErr := readBoth(t, answer)
		if fast == nil {
			return
		}
		if std == nil {
			t.Fatalf("%q: net/http refuses what parseWholeHead takes: %v", answer, stdErr)
		}
		if std.StatusCode != fast.StatusCode || std.ContentLength != fast.ContentLength || std.Close != fast.Close ||
			std.Status != fast.Status || stdBody != fastBody || stdErr != fastErr || len(std.Header) != len(fast.Header) {
			t.Fatalf("%q: net/http %+v %q %v; parseWholeHead %+v %q %v", answer, std, stdBody, stdErr, fast, fastBody, fastErr)
		}
		for k, v := range std.Header {
			if strings.Join(fast.Header[k], "\x00") != strings.Join(v, "\x00") {
				t.Fatalf("%q: header %s: net/http %q, parseWholeHead %q", answer, k, v, fast.Header[k])
			}
		}
	})
}
