package actors

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/messages"
)

// Store persists the registry's registrations in one JSON file (SPEC §9). Save never blocks on the
// disk: it hands the snapshot to one writer goroutine, which writes only the newest one, so a burst of
// registrations costs one write instead of one per change.
type Store struct {
	path  string
	log   logrus.FieldLogger
	write func(path string, data []byte) error

	mu       sync.Mutex
	pending  []messages.Registration // the newest snapshot, until the writer takes it
	saved    uint64                  // snapshots handed to Save
	written  uint64                  // the newest snapshot the writer finished (on disk or failed)
	err      error                   // the outcome of that write
	progress chan struct{}           // closed and replaced after every write, to wake Flush
	closed   bool

	wake chan struct{} // one token: a snapshot is pending
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

// OpenStore returns the store of the state file at path and starts its writer. Close it when done.
func OpenStore(path string, log logrus.FieldLogger) *Store {
	return openStore(path, log, writeAtomic)
}

func openStore(path string, log logrus.FieldLogger, write func(string, []byte) error) *Store {
	s := &Store{
		path: path, log: log.WithField("state_file", path), write: write,
		progress: make(chan struct{}),
		wake:     make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
	}
	go s.run()
	return s
}

// Save hands the writer a snapshot of the registrations and returns at once. Call it from OnChange.
func (s *Store) Save(regs []messages.Registration) {
	// The writer reads the snapshot later on its own goroutine: copy it, so the caller may reuse its
	// slices.
	snap := make([]messages.Registration, len(regs))
	for i, r := range regs {
		r.Models = slices.Clone(r.Models)
		snap[i] = r
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.log.Warn("registry changed after the state file was closed: change not saved")
		return
	}
	s.pending = snap
	s.saved++
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // the writer is already due to run and will take the newest snapshot
	}
}

// Flush waits until the newest snapshot handed to Save is on disk, and returns the error of that
// write, if any.
func (s *Store) Flush(ctx context.Context) error {
	s.mu.Lock()
	target := s.saved
	for s.written < target {
		ch := s.progress
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
	}
	err := s.err
	s.mu.Unlock()
	return err
}

// Close writes the last snapshot, if one is pending, and stops the writer. Saves after Close are
// dropped.
func (s *Store) Close() {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.quit)
		<-s.done
	})
}

// run is the writer goroutine.
func (s *Store) run() {
	defer close(s.done)
	for {
		select {
		case <-s.wake:
			s.writePending()
		case <-s.quit:
			s.writePending()
			return
		}
	}
}

// writePending writes the newest snapshot, if any, and wakes Flush.
func (s *Store) writePending() {
	s.mu.Lock()
	if s.written == s.saved {
		s.mu.Unlock()
		return
	}
	snap, seq := s.pending, s.saved
	s.pending = nil
	s.mu.Unlock()

	data, err := encodeState(snap)
	if err == nil {
		err = s.write(s.path, data)
	}
	if err != nil {
		s.log.WithError(err).Error("cannot write the state file: the registry will be saved again on its next change")
	}

	s.mu.Lock()
	s.written, s.err = seq, err
	close(s.progress)
	s.progress = make(chan struct{})
	s.mu.Unlock()
}

// writeAtomic replaces path with data so that a reader, or a crash, sees the old file or the new one,
// never a mix: a temp file in the same directory (rename is atomic only within one file system),
// fsynced before the rename.
func writeAtomic(path string, data []byte) (err error) {
	f, err := createTemp(path)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// createTemp creates, 0600, the temp file that writeAtomic renames to path, and path's directory
// (0700: the file names internal hosts) if it is missing.
func createTemp(path string) (*os.File, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
}

// CheckStateFile reports whether the state file at path could be written, so that a bad path is
// refused at start rather than at the registry's first change: path is not a directory, and a temp
// file can be created next to it (its directory is created if missing) and is removed at once. An
// existing state file is left as it is.
func CheckStateFile(path string) error {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	f, err := createTemp(path)
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// syncDir makes the rename itself durable. Some file systems refuse to fsync a directory; the file is
// already complete on disk then, so the error is not worth failing the save for.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// Load reads the state file. A missing file is an empty registry, and so is an empty one (only
// whitespace): LMDeploy's proxy skips an empty proxy_config.json, and an operator may clear the
// registry by truncating the file; it is overwritten at the next change. A corrupt one is reported,
// moved aside next to it with its bytes intact, and read as empty, so the proxy starts rather than
// refusing to; only an unreadable file, or a corrupt one that cannot be moved aside, is an error.
func (s *Store) Load() ([]messages.Registration, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state file: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	regs, err := decodeState(data)
	if err == nil {
		return regs, nil
	}
	aside := s.path + ".corrupt-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if rerr := os.Rename(s.path, aside); rerr != nil {
		return nil, fmt.Errorf("state file is corrupt (%v) and cannot be moved aside: %w", err, rerr)
	}
	s.log.WithError(err).WithField("moved_to", aside).Warn("state file is corrupt: moved aside, starting with no replica")
	return nil, nil
}

// DefaultStatePath is where the registry is kept unless --state-file says otherwise:
// $XDG_STATE_HOME/lmproxy/registry.json, else ~/.local/state/lmproxy/registry.json, else a directory
// of this user's under the temp dir.
func DefaultStatePath() string {
	// The XDG spec says to ignore a relative XDG_STATE_HOME.
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "lmproxy", "registry.json")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".local", "state", "lmproxy", "registry.json")
	}
	return filepath.Join(os.TempDir(), "lmproxy-"+strconv.Itoa(os.Getuid()), "registry.json")
}
