package h1

import (
	"bufio"
	"net/textproto"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// headSeeds are request heads wholeHead takes, and heads it must leave to textproto.
var headSeeds = []string{
	"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy:8000\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 42\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n{}",
	"GET / HTTP/1.1\r\n\r\n",
	"GET /v1/models HTTP/1.0\r\nhost: h\r\nx-a: 1\r\nX-A: 2\r\nx-empty:\r\n\r\nGET / HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX-Tab: \ta\tb \t\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello",
	"GET / HTTP/1.1\r\nHost: h\nX-Bare-LF: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\rX-Bare-CR: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX-Ctl: a\x01b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
	"GET / HTTP/1.1\r\n : empty name\r\n\r\n",
	"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\n",
	"GET / HTTP/1.1\r\nhOST: h\r\ncontent-type: a\r\nx-request-id: 7\r\nauthorization: Bearer k\r\n\r\n",
}

// FuzzWholeHead: whatever head wholeHead takes, textproto's path reads the same way: the same
// request line, the same header, the same bytes consumed.
func FuzzWholeHead(f *testing.F) {
	for _, s := range headSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		fast := bufio.NewReaderSize(strings.NewReader(in), 4096)
		fast.Peek(1)
		line, h, whole := wholeHead(fast, 1<<20, nil)
		if !whole {
			if fast.Buffered() != min(len(in), 4096) {
				t.Fatalf("wholeHead declined %q but consumed %d bytes", in, min(len(in), 4096)-fast.Buffered())
			}
			return
		}
		slow := bufio.NewReaderSize(strings.NewReader(in), 4096)
		tp := textproto.Reader{R: slow}
		wantLine, err := tp.ReadLine()
		if err != nil {
			t.Fatalf("textproto cannot read the request line of %q that wholeHead took: %v", in, err)
		}
		want, err := readHeader(&tp)
		if err != nil {
			t.Fatalf("textproto refuses the header of %q that wholeHead took: %v", in, err)
		}
		if line != wantLine || !reflect.DeepEqual(h, want) {
			t.Fatalf("%q:\nwholeHead %q %v\ntextproto %q %v", in, line, h, wantLine, want)
		}
		if fast.Buffered() != slow.Buffered() {
			t.Fatalf("%q: wholeHead left %d bytes, textproto %d", in, fast.Buffered(), slow.Buffered())
		}
	})
}

// TestWholeHeadDeclines: wholeHead takes the common heads; those textproto must read (or refuse)
// are left to it.
func TestWholeHeadDeclines(t *testing.T) {
	for _, in := range append(headSeeds[:4:4], headSeeds[13]) {
		br := bufio.NewReader(strings.NewReader(in))
		br.Peek(1)
		if _, _, whole := wholeHead(br, 1<<20, nil); !whole {
			t.Errorf("wholeHead declined %q", in)
		}
	}
	for _, in := range headSeeds[4:13] {
		br := bufio.NewReader(strings.NewReader(in))
		br.Peek(1)
		if _, _, whole := wholeHead(br, 1<<20, nil); whole {
			t.Errorf("wholeHead took %q", in)
		}
	}
	br := bufio.NewReader(strings.NewReader(headSeeds[0]))
	br.Peek(1)
	if _, _, whole := wholeHead(br, 64, nil); whole {
		t.Error("wholeHead took a head over its byte limit")
	}
}

// TestPlainPath: a target plainPath takes is the URL url.ParseRequestURI makes of it.
func TestPlainPath(t *testing.T) {
	for _, target := range []string{"/", "/v1/chat/completions", "/a-b_c.d~e/", "//x", "/a/../b", "/v1/models?x=1",
		"/a%20b", "/a b", "/a#f", "*", "http://h/p", "/caf\xc3\xa9", "/a;b", "/a:b", "/@x", "/a+b"} {
		want, err := url.ParseRequestURI(target)
		if !plainPath(target) {
			continue
		}
		if err != nil {
			t.Errorf("plainPath took %q, which url.ParseRequestURI refuses: %v", target, err)
		} else if got := (&url.URL{Path: target}); !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %#v, url.ParseRequestURI %#v", target, got, want)
		}
	}
	for _, target := range []string{"/v1/models?x=1", "/a%20b", "/a b", "/a#f", "*", "http://h/p", "/caf\xc3\xa9", "/a;b"} {
		if plainPath(target) {
			t.Errorf("plainPath took %q", target)
		}
	}
}
