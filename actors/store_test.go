package actors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// openStore opens a store at path with a log hook, and closes it when the test ends.
func openStore(t *testing.T, path string) (*actors.Store, *logtest.Hook) {
	t.Helper()
	log, hook := logtest.NewNullLogger()
	s := actors.OpenStore(path, log)
	t.Cleanup(s.Close)
	return s, hook
}

func mustFlush(t *testing.T, s *actors.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	require.NoError(t, s.Flush(ctx))
}

// mustLoad reads path through a store of its own, failing the test on an error or on anything logged
// (a corrupt file).
func mustLoad(t *testing.T, path string) []messages.Registration {
	t.Helper()
	log, hook := logtest.NewNullLogger()
	s := actors.OpenStore(path, log)
	defer s.Close()
	regs, err := s.Load()
	require.NoError(t, err)
	for _, e := range hook.AllEntries() {
		t.Errorf("Load logged %s: %s %v", e.Level, e.Message, e.Data)
	}
	return regs
}

// snapshot returns n (at most 100) registrations tagged with gen, mixing roles, speeds and model
// lists, sorted by URL as the registry's snapshots are: the state file, a JSON object, keeps no order.
func snapshot(gen, n int) []messages.Registration {
	regs := make([]messages.Registration, n)
	for i := range regs {
		regs[i] = messages.Registration{
			URL:    fmt.Sprintf("http://10.0.%d.%d:23333", gen%256, 100+i),
			Models: []string{fmt.Sprintf("model-%d", gen), "shared"},
			Role:   messages.Role(1 + i%3),
			Speed:  float64(i % 4 * 5),
		}
	}
	return regs
}

// TestStoreRoundTrip: what Save wrote, Load reads back the same, a fractional speed included; the
// missing directory is created 0700 and the file is 0600 (it names internal hosts).
func TestStoreRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "lmproxy", "registry.json")
	want := []messages.Registration{
		{URL: "http://10.0.0.1:23333", Models: []string{"internlm2", "qwen"}, Role: messages.Hybrid, Speed: 12.5},
		{URL: "http://[::1]:9000", Models: []string{"qwen"}, Role: messages.Decode, Speed: 3},
		{URL: "http://slow:1", Models: []string{"qwen"}, Role: messages.Hybrid, Speed: 0.25},
		{URL: "https://p.example:8443", Models: []string{"qwen"}, Role: messages.Prefill},
	}
	s, _ := openStore(t, path)
	s.Save(want)
	mustFlush(t, s)

	require.Equal(t, want, mustLoad(t, path))

	dir, err := os.Stat(filepath.Dir(path))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), dir.Mode().Perm())
	file, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), file.Mode().Perm())
}

// TestStoreWritesLMDeployProxyConfig: the state file is LMDeploy's proxy_config.json, so that
// `lmdeploy serve proxy` started on it (a rollback) reads it: an object of URL → string, each string
// the JSON text pydantic's Status.model_dump_json() writes (these bytes are its output for the same
// status): role the EngineRole number, the deque of latencies a list, speed an integer or null. A
// fractional speed, which LMDeploy's int cannot hold, is written rounded (at least 1, so it stays
// declared) with the exact value in a key of lmproxy's that pydantic ignores.
func TestStoreWritesLMDeployProxyConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy_config.json")
	s, _ := openStore(t, path)
	s.Save([]messages.Registration{
		{URL: "http://10.0.0.1:23333", Models: []string{"internlm2", "qwen"}, Role: messages.Hybrid},
		{URL: "http://10.0.0.2:23333", Models: []string{"qwen"}, Role: messages.Prefill, Speed: 3},
		{URL: "http://10.0.0.3:23333", Role: messages.Decode, Speed: 12.5},
		{URL: "http://10.0.0.4:23333", Models: []string{"qwen"}, Role: messages.Hybrid, Speed: 0.25},
	})
	mustFlush(t, s)

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var nodes map[string]string // LMDeploy: json.load, then Status.model_validate_json of each value
	require.NoError(t, json.Unmarshal(raw, &nodes), string(raw))
	require.Equal(t, map[string]string{
		"http://10.0.0.1:23333": `{"role":1,"models":["internlm2","qwen"],"unfinished":0,"latency":[],"speed":null}`,
		"http://10.0.0.2:23333": `{"role":2,"models":["qwen"],"unfinished":0,"latency":[],"speed":3}`,
		"http://10.0.0.3:23333": `{"role":3,"models":[],"unfinished":0,"latency":[],"speed":13,"lmproxy_speed":12.5}`,
		"http://10.0.0.4:23333": `{"role":1,"models":["qwen"],"unfinished":0,"latency":[],"speed":1,"lmproxy_speed":0.25}`,
	}, nodes)

	s.Save(nil)
	mustFlush(t, s)
	raw, err = os.ReadFile(path)
	require.NoError(t, err)
	require.JSONEq(t, `{}`, string(raw), "no replica is LMDeploy's empty object")
}

// TestStoreLoadsVersion1File: the format earlier lmproxy versions wrote is still read, so an upgrade
// keeps the registry; the next change rewrites it as LMDeploy's.
func TestStoreLoadsVersion1File(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	content := `{"version": 1, "replicas": [
  {"url": "http://10.0.0.1:23333", "models": ["internlm2", "qwen"], "role": 1, "speed": 12.5},
  {"url": "https://p.example:8443", "models": ["qwen"], "role": 2}
]}`
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	want := []messages.Registration{
		{URL: "http://10.0.0.1:23333", Models: []string{"internlm2", "qwen"}, Role: messages.Hybrid, Speed: 12.5},
		{URL: "https://p.example:8443", Models: []string{"qwen"}, Role: messages.Prefill},
	}
	require.Equal(t, want, mustLoad(t, path))

	s, _ := openStore(t, path)
	s.Save(want)
	mustFlush(t, s)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NotContains(t, string(raw), `"version"`)
	require.Equal(t, want, mustLoad(t, path))
}

// TestStoreEmptyRegistryRoundTrip: removing the last replica is saved as an empty list, not left as
// the previous file.
func TestStoreEmptyRegistryRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	s, _ := openStore(t, path)
	s.Save(snapshot(1, 2))
	s.Save(nil)
	mustFlush(t, s)
	require.Empty(t, mustLoad(t, path))
}

// TestStoreLoadMissingFile: no state file yet is an empty registry, not an error, and Load creates
// nothing.
func TestStoreLoadMissingFile(t *testing.T) {
	dir := t.TempDir()
	require.Empty(t, mustLoad(t, filepath.Join(dir, "registry.json")))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries)
}

// TestCheckStateFile: a state file that can be written passes, its missing directory created 0700,
// and the check leaves no trace: an existing file keeps its bytes and no temp file stays behind. A
// parent that is a file, or a path that is a directory, fails and names the path.
func TestCheckStateFile(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "registry.json")
	require.NoError(t, os.WriteFile(existing, []byte("not even JSON"), 0o600))
	require.NoError(t, actors.CheckStateFile(existing))
	got, err := os.ReadFile(existing)
	require.NoError(t, err)
	require.Equal(t, "not even JSON", string(got))
	requireOnlyFile(t, dir, "registry.json")

	nested := filepath.Join(dir, "state", "lmproxy", "registry.json")
	require.NoError(t, actors.CheckStateFile(nested))
	st, err := os.Stat(filepath.Dir(nested))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	entries, err := os.ReadDir(filepath.Dir(nested))
	require.NoError(t, err)
	require.Empty(t, entries, "the check's temp file is removed")

	require.ErrorContains(t, actors.CheckStateFile(filepath.Join(existing, "registry.json")), existing)
	require.ErrorContains(t, actors.CheckStateFile(dir), "is a directory")
}

// TestStoreEmptyFileIsNoRegistrations: an empty or whitespace-only state file (one touched by hand or
// truncated by a tool) is an empty registry, as LMDeploy's proxy reads an empty proxy_config.json:
// no warning, and the file stays where it is until the next change overwrites it.
func TestStoreEmptyFileIsNoRegistrations(t *testing.T) {
	for name, content := range map[string]string{"empty": "", "whitespace": " \n\t\r\n"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "registry.json")
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			require.Empty(t, mustLoad(t, path))
			requireOnlyFile(t, dir, "registry.json")

			s, _ := openStore(t, path)
			s.Save(snapshot(1, 1))
			mustFlush(t, s)
			require.Equal(t, snapshot(1, 1), mustLoad(t, path))
		})
	}
}

// heldWriter is a store writer that blocks its first write until released and records every write.
type heldWriter struct {
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	writes  [][]byte
}

func newHeldWriter() *heldWriter {
	return &heldWriter{entered: make(chan struct{}), release: make(chan struct{})}
}

func (w *heldWriter) write(_ string, data []byte) error {
	w.mu.Lock()
	w.writes = append(w.writes, data)
	first := len(w.writes) == 1
	w.mu.Unlock()
	if first {
		close(w.entered)
		<-w.release
	}
	return nil
}

// TestStoreCoalescesBursts: while one write is in progress, Save returns at once however often it is
// called, and the burst becomes one more write, of the newest snapshot only.
func TestStoreCoalescesBursts(t *testing.T) {
	w := newHeldWriter()
	s := actors.OpenStoreWith(filepath.Join(t.TempDir(), "registry.json"), logrus.New(), w.write)
	defer s.Close()

	s.Save(snapshot(0, 3))
	<-w.entered // the writer is now busy with snapshot 0
	for gen := 1; gen <= 100; gen++ {
		s.Save(snapshot(gen, 3)) // would hang here if Save waited for the disk
	}
	close(w.release)
	mustFlush(t, s)

	w.mu.Lock()
	defer w.mu.Unlock()
	require.Len(t, w.writes, 2, "the burst of 100 saves must be written once")
	last, err := actors.DecodeState(w.writes[1])
	require.NoError(t, err)
	require.Equal(t, snapshot(100, 3), last)
}

// TestStoreManyQuickSavesKeepTheLast: after a burst of saves through the real writer, the file holds
// the last snapshot and no temp file is left behind.
func TestStoreManyQuickSavesKeepTheLast(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.json")
	s, _ := openStore(t, path)
	for gen := range 1000 {
		s.Save(snapshot(gen, 1+gen%7))
	}
	mustFlush(t, s)
	require.Equal(t, snapshot(999, 1+999%7), mustLoad(t, path))
	requireOnlyFile(t, dir, "registry.json")
}

// TestStoreFlushHonoursContext: Flush gives up when its context ends, even with a write stuck.
func TestStoreFlushHonoursContext(t *testing.T) {
	w := newHeldWriter()
	s := actors.OpenStoreWith(filepath.Join(t.TempDir(), "registry.json"), logrus.New(), w.write)
	defer s.Close()
	s.Save(snapshot(0, 1))
	<-w.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, s.Flush(ctx), context.Canceled)
	close(w.release)
	mustFlush(t, s)
}

// TestStoreReaderNeverSeesPartialFile: a reader loading while the file is rewritten again and again
// always gets one whole snapshot: never a parse error, never a mix of two snapshots.
func TestStoreReaderNeverSeesPartialFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.json")
	s, _ := openStore(t, path)
	s.Save(snapshot(0, 1))
	mustFlush(t, s)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for gen := 1; gen <= 200; gen++ {
			s.Save(snapshot(gen, 1+gen%60)) // sizes vary from 1 to 60 replicas: a torn file would show
			if err := s.Flush(context.Background()); err != nil {
				t.Errorf("flush %d: %v", gen, err)
				return
			}
		}
	}()

	loads := 0
	for running := true; running; loads++ {
		select {
		case <-done:
			running = false
		default:
		}
		regs := mustLoad(t, path)
		require.NotEmpty(t, regs)
		var gen int
		_, err := fmt.Sscanf(regs[0].Models[0], "model-%d", &gen)
		require.NoError(t, err)
		require.Equal(t, snapshot(gen, 1+gen%60), regs, "load %d saw a snapshot that was never saved", loads)
	}
	t.Logf("%d loads during 200 rewrites", loads)
	requireOnlyFile(t, dir, "registry.json")
}

// TestStoreCorruptFileMovedAside: a file that is not a registry — bad JSON, the wrong shape, or an
// entry /nodes/add would refuse — is logged with its path, moved aside in the same directory with its
// bytes intact, and read as empty so the proxy still starts.
func TestStoreCorruptFileMovedAside(t *testing.T) {
	entry := `{"url": %q, "models": %s, "role": %s, "speed": %s}`
	ok := func(url, models, role, speed string) string {
		return `{"version": 1, "replicas": [` + fmt.Sprintf(entry, url, models, role, speed) + `]}`
	}
	cases := map[string]string{
		"not JSON":        "nodes:\n  http://a: {}\n",
		"truncated":       `{"version": 1, "replicas": [{"url": "http://a:1", "mod`,
		"array":           `[{"url": "http://a:1"}]`,
		"null":            "null",
		"future version":  `{"version": 2, "replicas": []}`,
		"replicas object": `{"version": 1, "replicas": {"url": "http://a:1"}}`,
		"bad scheme":      ok("ftp://a:1", `["m"]`, "1", "0"),
		"no host":         ok("http://", `["m"]`, "1", "0"),
		"trailing slash":  ok("http://a:1/", `["m"]`, "1", "0"),
		"credentials":     ok("http://bob:pw@a:1", `["m"]`, "1", "0"),
		"role 0":          ok("http://a:1", `["m"]`, "0", "0"),
		"role 4":          ok("http://a:1", `["m"]`, "4", "0"),
		"negative speed":  ok("http://a:1", `["m"]`, "1", "-1"),
		"empty model":     ok("http://a:1", `[""]`, "1", "0"),
		"models string":   ok("http://a:1", `"m"`, "1", "0"),
		"duplicate url": `{"version": 1, "replicas": [` + fmt.Sprintf(entry, "http://a:1", `["m"]`, "1", "0") + `,` +
			fmt.Sprintf(entry, "http://a:1", `["n"]`, "2", "0") + `]}`,
		"lmdeploy not object": `{"http://a:1": 5}`,
		"lmdeploy bad text":   `{"http://a:1": "{\"models\": [\"m\"], \"role\": "}`,
		"invalid UTF-8":       "{\"version\": 1, \"replicas\": [\xff]}",
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "registry.json")
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			s, hook := openStore(t, path)

			regs, err := s.Load()
			require.NoError(t, err)
			require.Empty(t, regs)

			moved, err := filepath.Glob(path + ".corrupt-*")
			require.NoError(t, err)
			require.Len(t, moved, 1)
			got, err := os.ReadFile(moved[0])
			require.NoError(t, err)
			require.Equal(t, content, string(got), "the corrupt file's bytes must be kept")
			requireOnlyFile(t, dir, filepath.Base(moved[0]))

			e := hook.LastEntry()
			require.NotNil(t, e)
			require.Equal(t, logrus.WarnLevel, e.Level)
			require.Equal(t, path, e.Data["state_file"])
			require.Equal(t, moved[0], e.Data["moved_to"])
		})
	}
}

// TestStoreLoadsLMDeployProxyConfig: LMDeploy's proxy_config.json (URL → the JSON text of its status)
// is read, so a user switching proxies keeps their replicas; a status object written by hand is read
// too. lmproxy's exact speed is taken only while it rounds to speed, so a speed edited by hand wins;
// a speed that is not positive (LMDeploy's example gives -1) is none, as POST /nodes/add takes it.
func TestStoreLoadsLMDeployProxyConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy_config.json")
	content := `{
  "http://10.0.0.2:23333": "{\"role\":1,\"models\":[\"internlm2\"],\"unfinished\":3,\"latency\":[0.5],\"speed\":null,\"epd_transfer_backend\":\"http_json\",\"encoder_output_receiver_address\":null}",
  "http://10.0.0.1:23333": {"role": "Decode", "models": ["qwen"], "speed": 5},
  "http://10.0.0.3:23333": "{\"role\":2,\"models\":[\"qwen\"],\"unfinished\":0,\"latency\":[],\"speed\":13,\"lmproxy_speed\":12.5}",
  "http://10.0.0.4:23333": "{\"role\":2,\"models\":[\"qwen\"],\"unfinished\":0,\"latency\":[],\"speed\":20,\"lmproxy_speed\":12.5}",
  "http://10.0.0.5:23333": "{\"role\":1,\"models\":[\"qwen\"],\"unfinished\":0,\"latency\":[],\"speed\":-1}"
}`
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	require.Equal(t, []messages.Registration{
		{URL: "http://10.0.0.1:23333", Models: []string{"qwen"}, Role: messages.Decode, Speed: 5},
		{URL: "http://10.0.0.2:23333", Models: []string{"internlm2"}, Role: messages.Hybrid},
		{URL: "http://10.0.0.3:23333", Models: []string{"qwen"}, Role: messages.Prefill, Speed: 12.5},
		{URL: "http://10.0.0.4:23333", Models: []string{"qwen"}, Role: messages.Prefill, Speed: 20},
		{URL: "http://10.0.0.5:23333", Models: []string{"qwen"}, Role: messages.Hybrid}, // LMDeploy's -1: no speed
	}, mustLoad(t, path))
}

// TestStoreWriteErrorReported: a state file that cannot be written is logged and returned by Flush;
// the proxy keeps running.
func TestStoreWriteErrorReported(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "not-a-dir")
	require.NoError(t, os.WriteFile(blocker, nil, 0o600))
	s, hook := openStore(t, filepath.Join(blocker, "registry.json"))
	s.Save(snapshot(0, 1))
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	require.Error(t, s.Flush(ctx))
	require.Equal(t, logrus.ErrorLevel, hook.LastEntry().Level)
}

// TestStoreCloseWritesLastSnapshotAndStops: Close writes a snapshot still pending, stops the writer
// goroutine, and later Saves are dropped without a panic.
func TestStoreCloseWritesLastSnapshotAndStops(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	path := filepath.Join(t.TempDir(), "registry.json")
	log, hook := logtest.NewNullLogger()
	s := actors.OpenStore(path, log)
	s.Save(snapshot(1, 2))
	s.Close()
	goleak.VerifyNone(t, ignore)

	require.Equal(t, snapshot(1, 2), mustLoad(t, path))
	s.Save(snapshot(2, 2))
	require.Equal(t, logrus.WarnLevel, hook.LastEntry().Level)
	require.NoError(t, s.Flush(context.Background()))
	s.Close()
	require.Equal(t, snapshot(1, 2), mustLoad(t, path))
}

// TestStorePersistsRegistryChanges: as the registry's OnChange, the store ends up holding exactly the
// registered replicas after adds, a replacement and a removal.
func TestStorePersistsRegistryChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	s, _ := openStore(t, path)
	r := startRegistry(t, actors.Config{OnChange: s.Save, Probe: newFakeProbe(answerHealthy).probe})
	a := messages.Registration{URL: "http://a:1", Models: []string{testModel}, Role: messages.Hybrid}
	b := messages.Registration{URL: "http://b:1", Models: []string{testModel}, Role: messages.Prefill, Speed: 2}
	r.mustRegister(a, messages.HealthHealthy)
	r.mustRegister(b, messages.HealthHealthy)
	b.Models = []string{testModel, "other"}
	r.mustRegister(b, messages.HealthHealthy)
	require.True(t, r.mustDeregister(a.URL))
	mustFlush(t, s)
	require.Equal(t, []messages.Registration{b}, mustLoad(t, path))
}

// TestDefaultStatePath: XDG_STATE_HOME when absolute, else under the home directory, else under the
// temp dir.
func TestDefaultStatePath(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_STATE_HOME", "/var/lib/xdg")
	require.Equal(t, "/var/lib/xdg/lmproxy/registry.json", actors.DefaultStatePath())

	t.Setenv("XDG_STATE_HOME", "relative/dir") // the XDG spec says to ignore it
	require.Equal(t, filepath.Join(home, ".local/state/lmproxy/registry.json"), actors.DefaultStatePath())

	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "")
	require.Equal(t, filepath.Join(os.TempDir(), fmt.Sprintf("lmproxy-%d", os.Getuid()), "registry.json"), actors.DefaultStatePath())
}

// requireOnlyFile fails the test unless dir holds exactly the file name: no temp file left behind.
func requireOnlyFile(t *testing.T, dir, name string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	require.Equal(t, []string{name}, names)
}
