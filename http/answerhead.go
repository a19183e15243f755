package http

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/lmproxy/lmproxy/http/h1"
)

// readAnswerHead reads a replica's answer head from br. The common head of a whole answer
// (HTTP/1.1, a final status with a body, one Content-Length, no Transfer-Encoding or Connection
// header, all of it already in br's buffer) is parsed in place, with about half of
// http.ReadResponse's allocations, on the path of every non-stream answer; for a lean request
// (lean.go) its Header is left nil, to be made from the lines its body keeps (pooledBody.lines)
// only if the full path takes the answer over. Any other head, a doubtful byte included, goes to http.ReadResponse as it is. pb
// is where the caller puts the body it wraps around the answer's: allocated with the answer when
// parsed in place.
func readAnswerHead(br *bufio.Reader, method string, lean bool) (resp *http.Response, pb *pooledBody, err error) {
	// The first read from the socket, as http.ReadResponse's would be, and with its error.
	if _, err := br.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, err
	}
	if method == http.MethodHead {
		resp, err = http.ReadResponse(br, headRequest)
	} else if a := parseWholeHead(br); a != nil {
		if !lean {
			a.Header = wholeHeader(a.pooled.lines, a.values[:0])
		}
		return &a.Response, &a.pooled, nil
	} else {
		resp, err = http.ReadResponse(br, nil) // nil: taken for a GET, which is all it needs to know
	}
	if err != nil {
		return nil, nil, err
	}
	return resp, new(pooledBody), nil
}

// headRequest tells http.ReadResponse that an answer has no body whatever its length says.
var headRequest = &http.Request{Method: http.MethodHead}

// wholeAnswer is an answer parsed in place with its body's readers and the header values of a
// common head: one allocation, not four, on the path of every non-stream answer.
type wholeAnswer struct {
	http.Response
	pooled pooledBody // its lines are the head's header lines, each with its CRLF
	length lengthBody
	values [8]string
}

// parseWholeHead parses the head at the start of br's buffer and consumes it, or returns nil and
// consumes nothing when the head is not the plain kind readAnswerHead describes. The answer's
// Header is left nil: wholeHeader makes it.
func parseWholeHead(br *bufio.Reader) *wholeAnswer {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 || !lengthFramed(buf[:end+2]) {
		return nil
	}
	// One string holds every value and the status text; net/http allocates each on its own.
	head := string(buf[:end+2]) // each line with its CRLF
	first, lines, _ := strings.Cut(head, "\r\n")
	code, ok := statusLine(first)
	if !ok {
		return nil
	}
	length := int64(-1)
	for rest := lines; len(rest) > 0; {
		var line string
		line, rest, _ = strings.Cut(rest, "\r\n")
		name, value, ok := strings.Cut(line, ":")
		if !ok || !h1.ValidFieldName(name) || !h1.ValidFieldValue(value) {
			return nil
		}
		if len(name) == len("Content-Length") && strings.EqualFold(name, "Content-Length") {
			value = strings.Trim(value, " \t")
			n, err := strconv.ParseInt(value, 10, 64)
			if length >= 0 || err != nil || n < 0 || value[0] == '+' {
				return nil
			}
			length = n
		}
	}
	if length < 0 {
		return nil
	}
	br.Discard(end + 4)
	a := new(wholeAnswer)
	a.Response = http.Response{
		Status: first[len("HTTP/1.1 "):], StatusCode: code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		ContentLength: length,
	}
	a.pooled.lines = lines
	a.length = lengthBody{r: br, n: length}
	a.Body = &a.length
	return a
}

// wholeHeader makes a whole answer's Header from its lines, which parseWholeHead checked; values,
// when its capacity is enough, holds the values.
func wholeHeader(lines string, values []string) http.Header {
	if n := strings.Count(lines, "\r\n"); n > cap(values) {
		values = make([]string, 0, n)
	}
	h := make(http.Header, cap(values))
	for len(lines) > 0 {
		var line string
		line, lines, _ = strings.Cut(lines, "\r\n")
		name, value, _ := strings.Cut(line, ":")
		key := textproto.CanonicalMIMEHeaderKey(name) // no allocation for the common names
		value = strings.Trim(value, " \t")
		if vv := h[key]; vv != nil {
			h[key] = append(vv, value)
		} else {
			values = append(values, value)
			h[key] = values[len(values)-1 : len(values) : len(values)]
		}
	}
	return h
}

// lengthFramed is a first look at a head's lines, before anything is allocated for them: false
// when one is a Transfer-Encoding (a stream's chunked answer) or Connection header, which
// parseWholeHead leaves to net/http.
func lengthFramed(lines []byte) bool {
	for len(lines) > 0 {
		line, rest, _ := bytes.Cut(lines, []byte("\r\n"))
		name, _, _ := bytes.Cut(line, []byte(":"))
		if bytes.EqualFold(name, []byte("Transfer-Encoding")) || bytes.EqualFold(name, []byte("Connection")) {
			return false
		}
		lines = rest
	}
	return true
}

// statusLine reads "HTTP/1.1 NNN reason" for a final status that has a body (not 1xx, 204 or 304).
func statusLine(line string) (int, bool) {
	const proto = "HTTP/1.1 "
	if len(line) < len(proto)+3 || line[:len(proto)] != proto || (len(line) > len(proto)+3 && line[len(proto)+3] != ' ') ||
		!h1.ValidFieldValue(line) {
		return 0, false
	}
	code := 0
	for i := len(proto); i < len(proto)+3; i++ {
		c := line[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified {
		return 0, false
	}
	return code, true
}

// lengthBody is an answer body of a known length read from the connection's buffer: io.EOF at its
// end, io.ErrUnexpectedEOF if the connection ends before it.
type lengthBody struct {
	r *bufio.Reader
	n int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	switch {
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	case err == nil && b.n == 0:
		return n, io.EOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }
