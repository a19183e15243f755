//go:build unix

package netio

import "syscall"

// PeekOpen reports whether a socket with nothing to read is still open: a one-byte peek that
// would block means open; EOF, a reset or bytes nobody asked for mean it cannot be reused.
func PeekOpen(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err == syscall.EAGAIN
}
