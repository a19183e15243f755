package actors

import "github.com/sirupsen/logrus"

// OpenStoreWith opens a store whose writer calls write instead of replacing the file, so a test can
// hold the writer in the middle of a write and see what it is handed.
func OpenStoreWith(path string, log logrus.FieldLogger, write func(path string, data []byte) error) *Store {
	return openStore(path, log, write)
}

// DecodeState exposes decodeState, to read what a held writer was handed.
var DecodeState = decodeState
