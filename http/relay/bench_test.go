//go:build linux

package relay_test

import (
	"context"
	"io"
	"testing"

	"github.com/lmproxy/lmproxy/http/relay"
)

// BenchmarkRelayEvent measures one SSE event through a relay loop: the replica's write, the loop's
// read and write, the client's read, on loopback TCP. Most of it is the kernel's.
func BenchmarkRelayEvent(b *testing.B) {
	r := relay.New(1)
	defer r.Close()
	up, client := newPair(b), newPair(b)
	ch := run(context.Background(), r, up, client, nil)
	ev := []byte(chunkOf(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" token"}}]}` + "\n\n"))
	buf := make([]byte, len(ev))
	b.ReportAllocs()
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		if _, err := up.far.Write(ev); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client.far, buf); err != nil {
			b.Fatal(err)
		}
	}
	io.WriteString(up.far, "0\r\n\r\n")
	if res := <-ch; !res.Ended {
		b.Fatalf("the stream did not end cleanly: %+v", res)
	}
}

// BenchmarkFramingScan measures following the chunk framing of one event, the relay's only
// per-byte work.
func BenchmarkFramingScan(b *testing.B) {
	ev := []byte(chunkOf(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" token"}}]}` + "\n\n"))
	var f relay.Framing
	b.ReportAllocs()
	b.SetBytes(int64(len(ev)))
	for b.Loop() {
		if _, err := f.Scan(ev); err != nil {
			b.Fatal(err)
		}
	}
}
