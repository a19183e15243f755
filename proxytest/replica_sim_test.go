package proxytest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// simPost posts body to the replica's control API path and returns the status and decoded answer.
func simPost(t *testing.T, c *http.Client, r *Replica, path, body string) (int, map[string]any) {
	t.Helper()
	resp := mustPost(t, c, r.URL+path, body)
	return resp.StatusCode, decodeJSON(t, resp)
}

// simGet decodes the JSON answer of GET path into v.
func simGet(t *testing.T, c *http.Client, r *Replica, path string, v any) {
	t.Helper()
	resp := mustGet(t, c, r.URL+path)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

func TestSimHealthSwitchesHealth(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	for _, tc := range []struct {
		status string
		code   int
	}{{"sleeping", 200}, {"unhealthy", 503}, {"healthy", 200}} {
		code, m := simPost(t, c, r, "/sim/health", `{"status":"`+tc.status+`"}`)
		require.Equal(t, 200, code)
		require.Equal(t, tc.status, m["status"])
		resp := mustGet(t, c, r.URL+"/health")
		require.Equal(t, tc.code, resp.StatusCode, tc.status)
		require.Equal(t, tc.status, decodeJSON(t, resp)["status"])
	}
}

func TestSimFaultSetsAndClearsTheFault(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 5})
	c := newClient(t)
	chat := `{"model":"sim-model","messages":"hi","stream":true}`

	code, m := simPost(t, c, r, "/sim/fault", `{"status":429,"body":"{\"error\":\"busy\"}"}`)
	require.Equal(t, 200, code)
	require.EqualValues(t, 429, m["status"])
	resp := mustPost(t, c, r.URL+"/v1/chat/completions", chat)
	require.Equal(t, 429, resp.StatusCode)
	b, _ := io.ReadAll(resp.Body)
	require.JSONEq(t, `{"error":"busy"}`, string(b))

	code, _ = simPost(t, c, r, "/sim/fault", `{"cut_after":2}`)
	require.Equal(t, 200, code)
	events, err := readSSE(mustPost(t, c, r.URL+"/v1/chat/completions", chat).Body)
	require.Len(t, events, 2)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)

	code, _ = simPost(t, c, r, "/sim/fault", `{"hang":true}`)
	require.Equal(t, 200, code)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = post(t, ctx, c, r.URL+"/v1/chat/completions", chat)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	code, _ = simPost(t, c, r, "/sim/fault", `{}`)
	require.Equal(t, 200, code)
	events, err = readSSE(mustPost(t, c, r.URL+"/v1/chat/completions", chat).Body)
	require.NoError(t, err)
	require.Equal(t, "[DONE]", events[len(events)-1])
}

func TestSimBadBodiesAre400(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	for _, tc := range []struct{ path, body, want string }{
		{"/sim/health", `{"status":`, "invalid JSON body"},
		{"/sim/health", ``, "invalid JSON body"},
		{"/sim/health", `{}`, `"status" is missing`},
		{"/sim/health", `{"status":"sleeping"} {}`, "more than one JSON value"},
		{"/sim/fault", `{"cutafter":2}`, `unknown field "cutafter"`},
		{"/sim/fault", `{"status":"500"}`, "invalid JSON body"},
		{"/sim/fault", `{"status":1000}`, `"status" 1000`},
	} {
		code, m := simPost(t, c, r, tc.path, tc.body)
		require.Equal(t, 400, code, tc.body)
		require.Contains(t, m["detail"], tc.want, tc.body)
	}
	resp := mustGet(t, c, r.URL+"/sim/fault")
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	// Nothing was changed.
	require.Equal(t, 200, mustGet(t, c, r.URL+"/health").StatusCode)
	require.Equal(t, 200, mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi"}`).StatusCode)
}

func TestSimReceivedListsRecordedRequests(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{MaxRecorded: 2})
	c := newClient(t)
	mustGet(t, c, r.URL+"/v1/models")
	for i := range 3 {
		req, err := http.NewRequest(http.MethodPost, r.URL+"/v1/completions",
			strings.NewReader(`{"model":"sim-model","prompt":"`+strconv.Itoa(i)+`","migration_request":{"remote_session_id":7}}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", "req-"+strconv.Itoa(i))
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
	}
	var got []struct {
		Method           string
		Path             string
		Headers          http.Header
		Body             string
		MigrationRequest json.RawMessage `json:"migration_request"`
	}
	simGet(t, c, r, "/sim/received", &got)
	require.Len(t, got, 2, "bounded by MaxRecorded")
	last := got[1]
	require.Equal(t, http.MethodPost, last.Method)
	require.Equal(t, "/v1/completions", last.Path)
	require.Equal(t, "req-2", last.Headers.Get("X-Request-Id"))
	require.JSONEq(t, `{"model":"sim-model","prompt":"2","migration_request":{"remote_session_id":7}}`, last.Body)
	require.JSONEq(t, `{"remote_session_id":7}`, string(last.MigrationRequest))

	simGet(t, c, r, "/sim/received?path=/v1/models", &got)
	require.Empty(t, got, "the models request fell out of the bound")
	require.NotNil(t, got, "an empty list, not null")
}

func TestSimStatsCountsCancels(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	r.SetFault(Fault{Hang: true})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := post(t, ctx, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi"}`)
		errc <- err
	}()
	<-r.NextRequest()

	var stats map[string]any
	simGet(t, c, r, "/sim/stats", &stats)
	require.Equal(t, map[string]any{"cancelled": 0.0, "active": 1.0, "terminated": false, "registered": false}, stats)

	cancel()
	require.Error(t, <-errc)
	// No require inside the condition: Eventually runs it on another goroutine.
	require.Eventually(t, func() bool {
		resp, err := c.Get(r.URL + "/sim/stats")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&stats) == nil && stats["cancelled"] == 1.0 && stats["active"] == 0.0
	}, 5*time.Second, 5*time.Millisecond)
	require.Len(t, r.Received(), 1, "/sim/* is not recorded")
}
