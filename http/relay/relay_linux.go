package relay

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lmproxy/lmproxy/http/netio"
)

// loopBufferSize is the read buffer each loop shares among its streams: large enough to take in one
// read what a replica sent between two wake-ups.
const loopBufferSize = 64 << 10

// maxHeld bounds what of an unfinished chunk a stream holds back: a larger chunk is passed on as
// it arrives (and a failure inside it can no longer be followed by an error event). SSE events
// are far smaller.
const maxHeld = 16 << 10

// maxEvents is the most events one epoll_wait returns to a loop.
const maxEvents = 256

// Relay is a set of event loops. A stream starts on the first-bytes loop, which waits for the
// replica's first bytes (the client's time to first token) and passes them on; the stream then
// moves to one of the other loops, taken in turn, for the rest of its body. The first-bytes loop
// handles one event per stream, so a first token never waits behind a batch of other streams'
// chunks: on 2 cores, at 256 streams, a first chunk's time from replica to client went from 2.0
// to 1.4 ms (nginx's 1.3) for 2% more CPU; a second loop sharing all the chunks took as much
// off for 8% more (docs/performance.md, sixteenth round).
type Relay struct {
	loops []*loop
	first *loop
	next  atomic.Uint32
}

// New starts n event loops and the first-bytes loop; it returns nil when the system cannot provide
// them (then callers copy bodies themselves).
func New(n int) *Relay {
	r := &Relay{}
	for i := 0; i <= max(n, 1); i++ {
		l, err := openLoop()
		if err != nil {
			r.Close()
			return nil
		}
		r.loops = append(r.loops, l)
	}
	r.first, r.loops = r.loops[0], r.loops[1:]
	return r
}

// Close stops the loops; the streams still running end as cancelled.
func (r *Relay) Close() {
	if r.first != nil {
		r.first.close()
	}
	for _, l := range r.loops {
		l.close()
	}
}

// Run relays a chunked body from the socket up to the socket client until it ends, either side
// fails, or ctx ends. head is what was already read of the body from up (it is written first). Both
// sockets must be non-blocking (as every Go socket is), and nothing else may read up or write
// client until Run returns. hold asks for whole chunks only (an event stream, which an error event
// may have to end; see Result.Line); otherwise bytes pass as they arrive. ok is false when
// the relay is closed; nothing was written then.
func (r *Relay) Run(ctx context.Context, up, client int, head []byte, hold bool) (res Result, ok bool) {
	s := &stream{up: up, client: client, hold: hold, done: make(chan struct{})}
	if len(head) > 0 {
		s.res.FirstByte = time.Now()
		n, err := s.f.Scan(head)
		if err != nil {
			return Result{UpErr: err, FirstByte: s.res.FirstByte}, true
		}
		s.res.Reusable = n == len(head)
		if !s.forward(head[:n]) {
			return s.result(), true
		}
		if s.f.Done() && len(s.backlog) == 0 {
			s.res.Ended = true
			return s.result(), true
		}
	}
	l := r.loops[r.next.Add(1)%uint32(len(r.loops))]
	if s.res.FirstByte.IsZero() {
		l, s.then = r.first, l
	}
	if !l.add(s) {
		if s.res.Written > 0 {
			s.res.Cancelled = true
			return s.result(), true
		}
		return Result{}, false
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		s.cancel()
		<-s.done
	}
	return s.result(), true
}

// stream is one relayed body. Between add and done it is touched under its own lock only.
type stream struct {
	mu      sync.Mutex
	id      int32
	up      int
	client  int
	f       Framing
	backlog []byte // written to the client when it can take it, before anything is read from up
	hold    bool   // whole chunks only: see Run
	held    []byte // the start of a chunk the replica has not finished sending
	// clientLine: where the data written to the client stands; MidLine also when it ends inside
	// a chunk.
	clientLine LineState
	res        Result
	finished   bool
	// clientWatched: the client's socket is in the loop's set (it was once slower than the
	// replica).
	clientWatched bool
	done          chan struct{}
	l             *loop // the loop the stream is in
	then          *loop // where it moves after its first bytes; nil once it has
}

func (s *stream) result() Result {
	s.res.Events = s.f.Events
	s.res.Line = s.clientLine
	if s.res.Ended || len(s.backlog) > 0 {
		s.res.Line = MidLine
	}
	if !s.res.Ended {
		s.res.Reusable = false
	}
	return s.res
}

// forward passes on body bytes just scanned by s.f: whole chunks that end with a whole line (see
// Framing.Safe), and the rest only when it outgrows maxHeld (or at once, unless the stream holds).
// It reports false when the client failed.
func (s *stream) forward(p []byte) bool {
	safe, line := s.f.Safe()
	if s.f.Done() {
		safe, line = len(p), EventEnd
	}
	if !s.hold || len(s.held)+len(p)-safe > maxHeld {
		safe, line = len(p), MidLine
		if s.f.AtBoundary() {
			line = s.f.Line()
		}
	}
	out := p[:safe]
	if safe > 0 && len(s.held) > 0 {
		s.held = append(s.held, out...)
		out = s.held
	}
	if safe > 0 {
		s.clientLine = line
		if !s.writeClient(out) {
			return false
		}
		s.held = s.held[:0]
	}
	if safe < len(p) {
		s.held = append(s.held, p[safe:]...)
	}
	return true
}

// writeClient writes p, keeping in the backlog what the client cannot take now. It reports false
// when the client failed.
func (s *stream) writeClient(p []byte) bool {
	for len(p) > 0 {
		n, err := netio.Write(s.client, p)
		if n > 0 {
			s.res.Written += int64(n)
			p = p[n:]
		}
		switch {
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			s.backlog = append(s.backlog[:0], p...)
			return true
		case err != nil:
			s.res.ClientErr = err
			return false
		}
	}
	return true
}

// loop is one event loop: an epoll set of the streams' sockets, and a pipe that wakes it for Close.
type loop struct {
	epfd int
	wake [2]int

	// mu guards the set of streams only, and is held for no system call: a stream's own work is
	// under the stream's lock. (A lock held by the loop for a whole batch kept the goroutines
	// starting streams waiting long enough to turn it into its starvation mode, where each unlock
	// yields the processor: a fifth of a b-like load's scheduling delay.)
	mu      sync.Mutex
	closing bool
	streams map[int32]*stream
	nextID  int32

	file *os.File        // the epoll set, in Go's netpoller
	rc   syscall.RawConn // waits for the set to have events

	// Touched by the loop's goroutine only.
	buf       []byte
	maybeMore bool // a socket may have more to read with no new event to say so
	exited    chan struct{}
}

// A stream's two sockets are told apart in epoll's data by the low bit.
func upToken(id int32) int32     { return id << 1 }
func clientToken(id int32) int32 { return id<<1 | 1 }

// openLoop makes a loop and starts it.
func openLoop() (*loop, error) {
	l, err := newLoop()
	if err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

// newLoop makes a loop without starting it.
func newLoop() (*loop, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, err
	}
	l := &loop{epfd: epfd, streams: map[int32]*stream{}, buf: make([]byte, loopBufferSize), exited: make(chan struct{})}
	if err := syscall.Pipe2(l.wake[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		syscall.Close(epfd)
		return nil, err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: -1}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, l.wake[0], &ev); err != nil {
		l.closeFDs()
		return nil, err
	}
	// A non-blocking descriptor given to os.NewFile is registered with the netpoller.
	l.file = os.NewFile(uintptr(epfd), "relay-epoll")
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.closeFDs()
		return nil, err
	}
	return l, nil
}

// add starts relaying s. It registers the sockets itself (epoll_ctl is safe from any thread), so
// starting a stream costs no wake-up of the loop.
func (l *loop) add(s *stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !l.insert(s) {
		return false
	}
	l.start(s)
	return true
}

// insert gives s an id and puts it in the set, unless the loop is closing.
func (l *loop) insert(s *stream) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	for {
		l.nextID++
		if l.nextID >= 1<<30 {
			l.nextID = 1
		}
		if l.streams[l.nextID] == nil {
			break
		}
	}
	s.id = l.nextID
	s.l = l
	l.streams[s.id] = s
	return true
}

// lookup returns the stream with id, or nil when it has finished.
func (l *loop) lookup(id int32) *stream {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams[id]
}

// cancel ends s now, unless it ended already.
func (s *stream) cancel() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.finished {
		s.res.Cancelled = true
		s.l.finish(s)
	}
}

func (l *loop) poke() { syscall.Write(l.wake[1], []byte{0}) }

func (l *loop) close() {
	l.mu.Lock()
	already := l.closing
	l.closing = true
	l.mu.Unlock()
	if !already {
		l.poke()
		<-l.exited
		l.closeFDs()
	}
}

func (l *loop) closeFDs() {
	syscall.Close(l.wake[0])
	syscall.Close(l.wake[1])
	if l.file != nil {
		l.file.Close()
	} else {
		syscall.Close(l.epfd)
	}
}

func (l *loop) run() {
	defer close(l.exited)
	events := make([]syscall.EpollEvent, maxEvents)
	// The loop waits in Go's netpoller for the epoll set to have events: blocked in epoll_wait
	// itself it would hold a thread in a system call, and each wake-up would cost the scheduler a
	// hand-off (measured: ten times the futex calls). It stays inside one RawRead, whose function
	// handles the events and asks to wait again: readiness is reset only when RawRead starts, so an
	// event that comes while a batch is handled wakes the next wait at once.
	stop := false
	err := l.rc.Read(func(uintptr) bool {
		for {
			n, err := netio.EpollPoll(l.epfd, events)
			if err == syscall.EINTR {
				continue
			}
			if err != nil || !l.dispatch(events[:n]) {
				stop = true
				return true
			}
			// A full batch, or a read that filled the buffer, may leave ready events that
			// will not signal the netpoller again: look once more before waiting.
			if n < len(events) && !l.maybeMore {
				return false
			}
			l.maybeMore = false
		}
	})
	if err != nil || stop {
		l.stopAll()
	}
}

// dispatch handles one batch of events; it reports false when the loop must stop.
func (l *loop) dispatch(events []syscall.EpollEvent) bool {
	for _, ev := range events {
		if ev.Fd == -1 {
			return false // only Close writes to the pipe
		}
		if s := l.lookup(ev.Fd >> 1); s != nil {
			l.handle(s, ev)
		}
	}
	return true
}

// handle passes one event to its stream.
func (l *loop) handle(s *stream, ev syscall.EpollEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return // it finished earlier in this batch, or was cancelled
	}
	if ev.Fd&1 == 1 {
		l.clientReady(s, ev.Events)
	} else {
		l.upReady(s, ev.Events)
	}
}

// start registers the sockets of s, just inserted.
func (l *loop) start(s *stream) {
	upEvents, clientEvents := uint32(syscall.EPOLLIN|syscall.EPOLLRDHUP), uint32(0)
	if len(s.backlog) > 0 {
		upEvents, clientEvents = 0, syscall.EPOLLOUT
	}
	ev := syscall.EpollEvent{Events: upEvents, Fd: upToken(s.id)}
	if err := netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, s.up, &ev); err != nil {
		s.res.UpErr = err
		l.finish(s)
		return
	}
	if clientEvents != 0 {
		l.watchClient(s, clientEvents)
	}
}

// watchClient sets what the loop waits for on the client's socket. The socket joins the set only
// the first time a client is slower than its replica: a client that leaves is seen by h1, which
// cancels the request, so most streams cost two epoll_ctl calls instead of four.
func (l *loop) watchClient(s *stream, events uint32) {
	op := syscall.EPOLL_CTL_MOD
	if !s.clientWatched {
		op = syscall.EPOLL_CTL_ADD
	}
	ev := syscall.EpollEvent{Events: events, Fd: clientToken(s.id)}
	if err := netio.EpollCtl(l.epfd, op, s.client, &ev); err != nil {
		s.res.ClientErr = err
		l.finish(s)
		return
	}
	s.clientWatched = true
}

// upReady reads what the replica sent and writes it to the client.
func (l *loop) upReady(s *stream, events uint32) {
	n, err := netio.Read(s.up, l.buf)
	// The socket may have more for the next read with no new event to say so: the read filled
	// the buffer, or the replica's close (or reset) came with the data, which the read returned
	// first. The loop looks again before it waits.
	if n == len(l.buf) || n > 0 && events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
		l.maybeMore = true
	}
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR:
		return
	case err != nil:
		s.res.UpErr = err
		l.finish(s)
		return
	case n == 0:
		s.res.UpErr = ErrReplicaClosed
		l.finish(s)
		return
	}
	if s.res.FirstByte.IsZero() {
		s.res.FirstByte = time.Now()
	}
	body, ferr := s.f.Scan(l.buf[:n])
	if !s.forward(l.buf[:body]) {
		l.finish(s)
		return
	}
	if ferr != nil {
		s.res.UpErr = ferr
		l.finish(s)
		return
	}
	if body < n {
		s.res.Reusable = false // bytes after the end: the connection is not in a known state
	} else if s.f.Done() {
		s.res.Reusable = true
	}
	switch {
	case s.f.Done() && len(s.backlog) == 0:
		s.res.Ended = true
		l.finish(s)
	case s.then != nil:
		l.move(s) // the relay loop takes the backlog too, if there is one
	case len(s.backlog) > 0:
		l.waitForClient(s)
	}
}

// move takes s, whose first bytes went out, from l to the loop it relays the rest on; the stream's
// lock is held. Its sockets are registered there afresh, for what the stream waits for now.
func (l *loop) move(s *stream) {
	to := s.then
	s.then = nil
	netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, s.up, nil)
	if s.clientWatched {
		netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, s.client, nil)
		s.clientWatched = false
	}
	l.mu.Lock()
	delete(l.streams, s.id)
	l.mu.Unlock()
	s.id = 0
	if !to.insert(s) {
		s.res.Cancelled = true // the relay is closing
		l.finish(s)
		return
	}
	to.start(s)
}

// waitForClient stops reading from the replica until the client took the backlog: a slow client
// slows its replica down instead of growing the proxy's memory.
func (l *loop) waitForClient(s *stream) {
	ev := syscall.EpollEvent{Events: 0, Fd: upToken(s.id)}
	netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, s.up, &ev)
	l.watchClient(s, syscall.EPOLLOUT)
}

// clientReady writes the backlog when the client can take more, and notices a client that failed.
func (l *loop) clientReady(s *stream, events uint32) {
	if len(s.backlog) == 0 {
		if events&(syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
			s.res.ClientErr = syscall.ECONNRESET
			l.finish(s)
		}
		return
	}
	p := s.backlog
	s.backlog = s.backlog[:0]
	if !s.writeClient(p) {
		l.finish(s)
		return
	}
	if len(s.backlog) > 0 {
		return
	}
	s.backlog = nil
	if s.f.Done() {
		s.res.Ended = true
		l.finish(s)
		return
	}
	ev := syscall.EpollEvent{Events: 0, Fd: clientToken(s.id)}
	netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, s.client, &ev)
	ev = syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: upToken(s.id)}
	netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, s.up, &ev)
}

// finish takes the stream's sockets out of the set and tells Run. The stream's lock is held.
func (l *loop) finish(s *stream) {
	if s.finished {
		return
	}
	s.finished = true
	if s.id != 0 {
		netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, s.up, nil)
		if s.clientWatched {
			netio.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, s.client, nil)
		}
		l.mu.Lock()
		delete(l.streams, s.id)
		l.mu.Unlock()
	}
	close(s.done)
}

// stopAll ends every stream as cancelled, when the loop stops.
func (l *loop) stopAll() {
	l.mu.Lock()
	l.closing = true
	streams := make([]*stream, 0, len(l.streams))
	for _, s := range l.streams {
		streams = append(streams, s)
	}
	l.mu.Unlock()
	for _, s := range streams {
		s.cancel()
	}
}
