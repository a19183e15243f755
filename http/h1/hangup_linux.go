package h1

import (
	"sync"
	"syscall"
)

// hangups tells connections that their client hung up while the connection goroutine is busy
// elsewhere (forwarding a request, waiting on a replica). net/http learns that with a second
// goroutine per connection parked in a one-byte read; one epoll set for the whole server, armed once
// per connection for EPOLLRDHUP, costs no goroutine and no wake-up per request.
type hangups struct {
	epfd  int
	wake  [2]int // a pipe in the set: a byte on it stops the loop
	mu    sync.Mutex
	conns map[int32]*conn
	next  int32
	done  chan struct{}
}

// newHangups starts the watcher; it returns nil when the system cannot provide one, and then
// connections learn of a hang-up only when a write to them fails.
func newHangups() *hangups {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	h := &hangups{epfd: epfd, conns: map[int32]*conn{}, done: make(chan struct{})}
	if err := syscall.Pipe2(h.wake[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		syscall.Close(epfd)
		return nil
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: -1}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, h.wake[0], &ev); err != nil {
		h.closeFDs()
		return nil
	}
	go h.loop()
	return h
}

// watch arms the watcher for c: c.hangUp runs once when its client closes or resets the
// connection. It returns an id for forget, or 0 when c cannot be watched.
func (h *hangups) watch(c *conn, fd int) int32 {
	h.mu.Lock()
	h.next++
	if h.next <= 0 {
		h.next = 1
	}
	id := h.next
	h.conns[id] = c
	h.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: id}
	if err := syscall.EpollCtl(h.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		h.mu.Lock()
		delete(h.conns, id)
		h.mu.Unlock()
		return 0
	}
	return id
}

// forget disarms the watch id on fd; call it before the connection is closed.
func (h *hangups) forget(id int32, fd int) {
	if id == 0 {
		return
	}
	syscall.EpollCtl(h.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	h.mu.Lock()
	delete(h.conns, id)
	h.mu.Unlock()
}

func (h *hangups) loop() {
	defer close(h.done)
	events := make([]syscall.EpollEvent, 64)
	for {
		n, err := syscall.EpollWait(h.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == -1 {
				return
			}
			h.mu.Lock()
			c := h.conns[ev.Fd]
			h.mu.Unlock()
			if c != nil {
				c.hangUp()
			}
		}
	}
}

// close stops the watcher and waits for it.
func (h *hangups) close() {
	syscall.Write(h.wake[1], []byte{0})
	<-h.done
	h.closeFDs()
}

func (h *hangups) closeFDs() {
	syscall.Close(h.wake[0])
	syscall.Close(h.wake[1])
	syscall.Close(h.epfd)
}
