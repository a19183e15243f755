//go:build !linux

package h1

// hangups is Linux's epoll watcher; elsewhere a connection learns that its client hung up only when
// a write to it fails.
type hangups struct{}

func newHangups() *hangups                     { return nil }
func (h *hangups) watch(c *conn, fd int) int32 { return 0 }
func (h *hangups) forget(id int32, fd int)     {}
func (h *hangups) close()                      {}
