//go:build !linux

package netio

import "net"

// Wrap returns c: outside Linux the standard library's reads and writes are used.
func Wrap(c net.Conn) net.Conn { return c }
