//go:build linux

package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy/http/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait of these tests.
const wait = 5 * time.Second

// pair is a connected TCP pair: near is the proxy's end (its descriptor is relayed), far the
// peer's (a replica or a client).
type pair struct {
	near, far net.Conn
	fd        int
}

func newPair(t testing.TB) *pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	far, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	near, err := ln.Accept()
	require.NoError(t, err)
	rc, err := near.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	p := &pair{near: near, far: far}
	rc.Control(func(fd uintptr) { p.fd = int(fd) })
	t.Cleanup(func() { near.Close(); far.Close() })
	return p
}

func newRelay(t *testing.T) *relay.Relay {
	t.Helper()
	r := relay.New(2)
	require.NotNil(t, r)
	t.Cleanup(r.Close)
	return r
}

func event(i int) string { return fmt.Sprintf("data: {\"i\":%d}\n\n", i) }

func chunkOf(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }

// run relays from up to client in a goroutine and returns its result's channel.
func run(ctx context.Context, r *relay.Relay, up, client *pair, head []byte) <-chan relay.Result {
	out := make(chan relay.Result, 1)
	go func() {
		res, ok := r.Run(ctx, up.fd, client.fd, head, true)
		if !ok {
			res.UpErr = fmt.Errorf("relay closed")
		}
		out <- res
	}()
	return out
}

func result(t *testing.T, ch <-chan relay.Result) relay.Result {
	t.Helper()
	select {
	case res := <-ch:
		return res
	case <-time.After(wait):
		t.Fatal("the relay did not end")
		return relay.Result{}
	}
}

// A stream is passed through byte for byte, each event as soon as the replica sends it, from the
// bytes already read with the headers to the last chunk; it ends exactly at the body's end, so
// the replica's connection can be reused.
func TestRelayPassesAStreamThroughEventByEvent(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	head := chunkOf(event(0))[:7] // part of the first chunk came with the headers
	ch := run(context.Background(), r, up, client, []byte(head))

	var want strings.Builder
	want.WriteString(head)
	io.WriteString(up.far, chunkOf(event(0))[7:])
	want.WriteString(chunkOf(event(0))[7:])
	got := make([]byte, 0, 4096)
	buf := make([]byte, 4096)
	for i := 1; i <= 20; i++ {
		// Each event reaches the client before the next is sent.
		for len(got) < want.Len() {
			client.far.SetReadDeadline(time.Now().Add(wait))
			n, err := client.far.Read(buf)
			require.NoError(t, err)
			got = append(got, buf[:n]...)
		}
		require.Equal(t, want.String(), string(got))
		c := chunkOf(event(i))
		io.WriteString(up.far, c)
		want.WriteString(c)
	}
	io.WriteString(up.far, "0\r\n\r\n")
	want.WriteString("0\r\n\r\n")
	res := result(t, ch)
	require.True(t, res.Ended)
	require.True(t, res.Reusable)
	require.Equal(t, 21, res.Events)
	require.Equal(t, int64(want.Len()), res.Written)
	require.False(t, res.FirstByte.IsZero())
	client.far.SetReadDeadline(time.Now().Add(wait))
	rest := make([]byte, want.Len()-len(got))
	_, err := io.ReadFull(client.far, rest)
	require.NoError(t, err)
	require.Equal(t, want.String(), string(got)+string(rest))

	// Nothing of the replica's connection was read past the body: the next answer is intact.
	io.WriteString(up.far, "HTTP/1.1 200 OK\r\n")
	up.near.SetReadDeadline(time.Now().Add(wait))
	next := make([]byte, 17)
	_, err = io.ReadFull(up.near, next)
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.1 200 OK\r\n", string(next))
}

// A replica that fails leaves the client at a boundary (an error event can follow) when the client
// got whole chunks ending with a whole line: a chunk the replica had not finished is held back and
// dropped. A chunk that ends inside a line, or an unfinished one too large to hold, leaves none.
func TestRelayReplicaFailure(t *testing.T) {
	huge := chunkOf("data: " + strings.Repeat("a", 20<<10) + "\n\n")[:18<<10]
	for _, tc := range []struct {
		name string
		sent string
		got  string // what reaches the client
		line relay.LineState
	}{
		{"between chunks", chunkOf(event(0)), chunkOf(event(0)), relay.EventEnd},
		{"inside a chunk", chunkOf(event(0)) + chunkOf(event(1))[:9], chunkOf(event(0)), relay.EventEnd},
		{"inside the last chunk", chunkOf(event(0)) + "0\r\n", chunkOf(event(0)), relay.EventEnd},
		{"a chunk ending after a line", chunkOf(event(0)) + chunkOf("data: x\n"), chunkOf(event(0)) + chunkOf("data: x\n"), relay.LineEnd},
		{"a chunk ending inside a line", chunkOf(event(0)) + chunkOf("data: {"), chunkOf(event(0)), relay.EventEnd},
		{"a chunk ending inside a line after a whole one", chunkOf(event(0)) + chunkOf("data: x\n") + chunkOf("data: {"),
			chunkOf(event(0)) + chunkOf("data: x\n"), relay.LineEnd},
		{"a line ended over two chunks", chunkOf(event(0)) + chunkOf("data: {") + chunkOf("}\n"),
			chunkOf(event(0)) + chunkOf("data: {") + chunkOf("}\n"), relay.LineEnd},
		{"a chunk ending with a CR", chunkOf(event(0)) + chunkOf("data: x\r"), chunkOf(event(0)) + chunkOf("data: x\r"), relay.MidLine},
		{"a chunk too large to hold", huge, huge, relay.MidLine},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRelay(t)
			up, client := newPair(t), newPair(t)
			ch := run(context.Background(), r, up, client, nil)
			io.WriteString(up.far, tc.sent)
			client.far.SetReadDeadline(time.Now().Add(wait))
			got := make([]byte, len(tc.got))
			_, err := io.ReadFull(client.far, got)
			require.NoError(t, err)
			require.Equal(t, tc.got, string(got))
			up.far.Close()
			res := result(t, ch)
			require.ErrorIs(t, res.UpErr, relay.ErrReplicaClosed)
			require.False(t, res.Ended)
			require.False(t, res.Reusable)
			require.Equal(t, tc.line, res.Line)
			require.Equal(t, int64(len(tc.got)), res.Written)
			// Nothing more reached the client.
			client.far.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			n, _ := client.far.Read(make([]byte, 1))
			require.Zero(t, n)
		})
	}
}

// The start of a chunk that arrives in pieces is held until the chunk is whole, then passed on.
func TestRelayPassesAChunkOnOnceWhole(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	c := chunkOf(event(0))
	ch := run(context.Background(), r, up, client, []byte(c[:4]))
	for i := 4; i < len(c); i += 5 {
		io.WriteString(up.far, c[i:min(i+5, len(c))])
		time.Sleep(time.Millisecond) // separate reads, most of the time
	}
	client.far.SetReadDeadline(time.Now().Add(wait))
	got := make([]byte, len(c))
	_, err := io.ReadFull(client.far, got)
	require.NoError(t, err)
	require.Equal(t, c, string(got))
	io.WriteString(up.far, "0\r\n\r\n")
	res := result(t, ch)
	require.True(t, res.Ended)
	require.Equal(t, int64(len(c)+5), res.Written)
}

// A replica that sends a chunk's line end only with the next chunk: each chunk's data still goes
// out as soon as it is whole, not one event late; failing before the line end leaves no boundary.
func TestRelayChunkLineEndWithTheNextChunk(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	ch := run(context.Background(), r, up, client, nil)
	var want strings.Builder
	for i := 0; i < 3; i++ {
		c := chunkOf(event(i))
		c = c[:len(c)-2] // without its line end
		if i > 0 {
			c = "\r\n" + c // the previous chunk's
		}
		io.WriteString(up.far, c)
		want.WriteString(c)
		client.far.SetReadDeadline(time.Now().Add(wait))
		got := make([]byte, want.Len())
		_, err := io.ReadFull(client.far, got[:len(c)])
		require.NoError(t, err, "event %d waited for the next chunk", i)
		require.Equal(t, c, string(got[:len(c)]))
	}
	up.far.Close()
	res := result(t, ch)
	require.ErrorIs(t, res.UpErr, relay.ErrReplicaClosed)
	require.Equal(t, relay.MidLine, res.Line, "the last chunk's line end never came")
	require.Equal(t, int64(want.Len()), res.Written)
}

// A stream that does not hold (not an event stream) passes the start of a chunk on at once.
func TestRelayWithoutHoldPassesBytesAtOnce(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	out := make(chan relay.Result, 1)
	go func() {
		res, _ := r.Run(context.Background(), up.fd, client.fd, nil, false)
		out <- res
	}()
	part := chunkOf(event(0))[:9]
	io.WriteString(up.far, part)
	client.far.SetReadDeadline(time.Now().Add(wait))
	got := make([]byte, len(part))
	_, err := io.ReadFull(client.far, got)
	require.NoError(t, err)
	require.Equal(t, part, string(got))
	up.far.Close()
	res := result(t, out)
	require.Equal(t, relay.MidLine, res.Line)
	require.Equal(t, int64(len(part)), res.Written)
}

// A replica whose close arrives with its last bytes is noticed: the read that returns the bytes
// leaves the end of the stream for a next read, and no new event comes to ask for it. (The first
// stream of a fresh loop waited forever before the loop looked again.)
func TestRelayReplicaClosingWithItsLastBytes(t *testing.T) {
	r := relay.New(1)
	defer r.Close()
	for i := 0; i < 50; i++ {
		up, client := newPair(t), newPair(t)
		for j := 0; j < 3; j++ {
			io.WriteString(up.far, chunkOf(event(j)))
		}
		up.far.Close()
		res := result(t, run(context.Background(), r, up, client, nil))
		require.ErrorIs(t, res.UpErr, relay.ErrReplicaClosed, "stream %d", i)
		require.Equal(t, relay.EventEnd, res.Line)
		require.Equal(t, 3, res.Events)
	}
}

// A cancelled context ends the relay at once, whatever the replica does.
func TestRelayEndsWhenTheContextEnds(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := run(ctx, r, up, client, []byte(chunkOf(event(0))))
	client.far.SetReadDeadline(time.Now().Add(wait))
	_, err := client.far.Read(make([]byte, 64))
	require.NoError(t, err)
	start := time.Now()
	cancel()
	res := result(t, ch)
	require.Less(t, time.Since(start), time.Second)
	require.True(t, res.Cancelled)
	require.False(t, res.Reusable)
	require.Equal(t, relay.EventEnd, res.Line)
}

// A stream still waiting for its first bytes ends when its context does.
func TestRelayEndsAStreamBeforeItsFirstBytes(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := run(ctx, r, up, client, nil)
	cancel()
	res := result(t, ch)
	require.True(t, res.Cancelled)
	require.Zero(t, res.Written)
}

// A client that hung up is noticed at the next write.
func TestRelayNoticesAClientThatLeft(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	ch := run(context.Background(), r, up, client, nil)
	client.far.(*net.TCPConn).SetLinger(0)
	client.far.Close() // a reset: the next write fails
	deadline := time.Now().Add(wait)
	var res relay.Result
	for done := false; !done; {
		require.True(t, time.Now().Before(deadline), "the relay did not notice")
		io.WriteString(up.far, chunkOf(event(0)))
		select {
		case res = <-ch:
			done = true
		case <-time.After(10 * time.Millisecond):
		}
	}
	require.Error(t, res.ClientErr)
	require.False(t, res.Reusable)
}

// A client that does not read slows its replica down: the relay stops reading from the replica
// instead of buffering, and everything arrives once the client reads again.
func TestRelaySlowClientPushesBackOnTheReplica(t *testing.T) {
	r := newRelay(t)
	up, client := newPair(t), newPair(t)
	// Fixed socket buffers: autotuned ones may grow to tcp_rmem's maximum (32 MiB here), enough
	// to take the whole body without any push-back.
	for _, c := range []net.Conn{up.near, up.far, client.near, client.far} {
		require.NoError(t, c.(*net.TCPConn).SetReadBuffer(128<<10))
		require.NoError(t, c.(*net.TCPConn).SetWriteBuffer(128<<10))
	}
	ch := run(context.Background(), r, up, client, nil)
	data := bytes.Repeat([]byte("x"), 64<<10)
	var want bytes.Buffer
	writerDone := make(chan error, 1)
	go func() {
		for i := 0; i < 400; i++ { // 25 MiB: far more than the sockets' buffers can hold
			c := chunkOf(string(data))
			if _, err := io.WriteString(up.far, c); err != nil {
				writerDone <- err
				return
			}
		}
		_, err := io.WriteString(up.far, "0\r\n\r\n")
		writerDone <- err
	}()
	for i := 0; i < 400; i++ {
		want.WriteString(chunkOf(string(data)))
	}
	want.WriteString("0\r\n\r\n")
	select {
	case <-writerDone:
		t.Fatal("the replica wrote everything while the client read nothing")
	case <-time.After(200 * time.Millisecond):
	}
	client.far.SetReadDeadline(time.Now().Add(wait))
	got, err := io.ReadAll(io.LimitReader(client.far, int64(want.Len())))
	require.NoError(t, err)
	require.Equal(t, want.Len(), len(got))
	require.True(t, bytes.Equal(want.Bytes(), got))
	require.NoError(t, <-writerDone)
	res := result(t, ch)
	require.True(t, res.Ended)
	require.Equal(t, int64(want.Len()), res.Written)
}

// Close ends running streams as cancelled; Run after Close refuses without touching the sockets.
func TestRelayClose(t *testing.T) {
	r := relay.New(1)
	require.NotNil(t, r)
	up, client := newPair(t), newPair(t)
	ch := run(context.Background(), r, up, client, nil)
	io.WriteString(up.far, chunkOf(event(0)))
	client.far.SetReadDeadline(time.Now().Add(wait))
	_, err := client.far.Read(make([]byte, 64))
	require.NoError(t, err)
	r.Close()
	require.True(t, result(t, ch).Cancelled)
	_, ok := r.Run(context.Background(), up.fd, client.fd, nil, true)
	require.False(t, ok)
}

// Streams started, cancelled and ended at the same time on the same loops each end the way their
// own history says: the loop's work on one stream never stalls or mixes up another.
func TestRelayManyStreamsAtOnce(t *testing.T) {
	r := newRelay(t)
	const streams, events = 32, 20
	var wg sync.WaitGroup
	for i := 0; i < streams; i++ {
		up, client := newPair(t), newPair(t)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch := run(ctx, r, up, client, nil)
			go io.Copy(io.Discard, client.far)
			cancelled := i%2 == 1
			for e := 0; e < events; e++ {
				if cancelled && e == events/2 {
					cancel()
					break
				}
				io.WriteString(up.far, chunkOf(event(e)))
			}
			if !cancelled {
				io.WriteString(up.far, "0\r\n\r\n")
			}
			res := result(t, ch)
			if cancelled {
				assert.True(t, res.Cancelled, "stream %d", i)
				return
			}
			assert.True(t, res.Ended, "stream %d", i)
			assert.Equal(t, events, res.Events, "stream %d", i)
		}(i)
	}
	wg.Wait()
}
