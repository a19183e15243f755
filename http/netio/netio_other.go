//go:build !linux

package netio

import "net"

// Wrap returns c: outside Linux the standard library's reads and writes are used.
func Wrap(c net.Conn) net.Conn { return c }

// WaitReadable returns at once: outside Linux the caller's read does the waiting.
func WaitReadable(c net.Conn) error { return nil }

// WriteWaitRead writes p to c: outside Linux the caller's read does the waiting.
func WriteWaitRead(c net.Conn, p []byte) (n int, waited bool, err error) {
	n, err = c.Write(p)
	return n, false, err
}
