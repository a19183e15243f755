//go:build linux && race

package netio

import "syscall"

// Under the race detector the standard calls are used: they tell it that what one goroutine
// wrote to a socket happens before another goroutine reads it, which raw calls would hide
// (tests that change state and then send a request would report false races).

// Read is read(2) on a non-blocking descriptor.
func Read(fd int, p []byte) (int, error) { return syscall.Read(fd, p) }

// Write is write(2) on a non-blocking descriptor.
func Write(fd int, p []byte) (int, error) { return syscall.Write(fd, p) }

// Peek is a non-blocking one-byte recv(2) with MSG_PEEK: nil when something (bytes, or the end of
// the stream) can be read, EAGAIN when nothing can yet.
func Peek(fd int) error {
	var b [1]byte
	_, _, err := syscall.Recvfrom(fd, b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err
}
