package http

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tidwall/gjson"
)

// The prefill answer's id names the session that keeps the KV cache only when it is a decimal
// integer (LMDeploy's str(session_id)); anything else fails rather than migrate a guessed session.
func TestParsePrefillAnswer(t *testing.T) {
	cases := []struct {
		name   string
		answer string
		want   prefillInfo
		err    string
	}{
		{"LMDeploy's answer", `{"id":"7","cache_block_ids":[3,4],"remote_token_ids":[11,12]}`,
			prefillInfo{session: 7, blocks: []int64{3, 4}, token: 12}, ""},
		{"a number id, no blocks or tokens", `{"id":7}`, prefillInfo{session: 7, blocks: []int64{}}, ""},
		{"null blocks and empty tokens", `{"id":"0","cache_block_ids":null,"remote_token_ids":[]}`,
			prefillInfo{session: 0, blocks: []int64{}}, ""},
		{"a chat id of newer LMDeploy", `{"id":"chatcmpl-3kTz9"}`, prefillInfo{}, `id "chatcmpl-3kTz9" is not a prefill session id`},
		{"no session chosen", `{"id":"-1"}`, prefillInfo{}, `id "-1" is not a prefill session id`},
		{"a fraction", `{"id":7.5}`, prefillInfo{}, `id 7.5 is not`},
		{"no id", `{"cache_block_ids":[1]}`, prefillInfo{}, "has no id"},
		{"null id", `{"id":null}`, prefillInfo{}, "has no id"},
		{"blocks not a list", `{"id":"1","cache_block_ids":"1,2"}`, prefillInfo{}, "cache_block_ids is not a list"},
		{"a token not an integer", `{"id":"1","remote_token_ids":[1.5]}`, prefillInfo{}, "remote_token_ids holds 1.5"},
		{"not JSON", `{"id":"1"`, prefillInfo{}, "not JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parsePrefillAnswer([]byte(c.answer))
			if c.err != "" {
				require.ErrorContains(t, err, c.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, c.want, got)
		})
	}
}

// The prefill body sets LMDeploy's prefill fields, replacing the client's, keeps the rest, and
// leaves the client's bytes alone for the decode request.
func TestPrefillBody(t *testing.T) {
	client := []byte(`{"model":"m","messages":"hi","stream":true,"max_tokens":50,"seed":3}`)
	original := string(client)
	for _, chat := range []bool{true, false} {
		b, err := prefillBody(client, chat)
		require.NoError(t, err)
		var got map[string]any
		require.NoError(t, json.Unmarshal(b, &got))
		want := map[string]any{"model": "m", "messages": "hi", "stream": false, "max_tokens": 1.0, "seed": 3.0,
			"with_cache": true, "preserve_cache": true}
		if chat {
			want["max_completion_tokens"] = 1.0
		}
		require.Equal(t, want, got)
	}
	require.Equal(t, original, string(client))

	b, err := prefillBody([]byte(`{"model":"m","prompt":"hi","max_completion_tokens":50}`), false)
	require.NoError(t, err)
	require.JSONEq(t, `{"model":"m","prompt":"hi","max_completion_tokens":1,"max_tokens":1,"stream":false,`+
		`"with_cache":true,"preserve_cache":true}`, string(b), "a completion's own max_completion_tokens is set too")
}

// A DistServe configuration that cmd's flag checks would never let through is a programming error:
// New refuses it at once rather than fail every request.
func TestNewDistServeRefusesABadConfig(t *testing.T) {
	require.PanicsWithValue(t, "lmhttp: unknown migration protocol \"UDP\" (want TCP, RDMA or NVLINK)",
		func() { newDistServe(&DistServeConfig{MigrationProtocol: "UDP"}) })
	require.PanicsWithValue(t, "lmhttp: unknown RDMA link type \"ETH\" (want RoCE or IB)",
		func() { newDistServe(&DistServeConfig{LinkType: "ETH"}) })
	require.Panics(t, func() { newDistServe(&DistServeConfig{}) }, "no link manager")
	_, err := NewLinkIO(&DistServeConfig{MigrationProtocol: "nvlink"}, nil)
	require.NoError(t, err, "names are case-insensitive")
}

// A client's duplicated key is read by the replica's parser last-wins (and by the proxy's own): each
// field the proxy sets must be the only one of its name, or a later copy of the client's overrides it.
func TestSetFieldsReplaceEveryCopy(t *testing.T) {
	client := []byte(`{"model":"m","messages":"hi","max_tokens":100,"max_tokens":7,"stream":true,"stream":false,` +
		`"with_cache":false,"with_cache":false,"preserve_cache":false,"max_completion_tokens":9,"max_completion_tokens":8}`)
	b, err := prefillBody(client, true)
	require.NoError(t, err)
	var got map[string]any
	require.NoError(t, json.Unmarshal(b, &got))
	require.Equal(t, map[string]any{"model": "m", "messages": "hi", "stream": false, "max_tokens": 1.0,
		"max_completion_tokens": 1.0, "with_cache": true, "preserve_cache": true}, got)
	for _, k := range []string{"max_tokens", "max_completion_tokens", "stream", "with_cache", "preserve_cache"} {
		require.Equal(t, 1, bytes.Count(b, []byte(`"`+k+`"`)), "%s in %s", k, b)
	}

	b, err = withMigrationRequest([]byte(`{"model":"m","migration_request":{"remote_session_id":5},"migration_request":null}`),
		migrationRequest{RemoteSessionID: 7})
	require.NoError(t, err)
	require.Equal(t, 1, bytes.Count(b, []byte(`"migration_request"`)), string(b))
	require.Equal(t, int64(7), gjson.GetBytes(b, "migration_request.remote_session_id").Int())
}

// A body of many copies of a key is set up in one pass: the work does not grow with the copies
// times the body (a client could otherwise spend the proxy's CPU with one request).
func TestSetFieldsIsOnePass(t *testing.T) {
	body := []byte(`{"model":"m","messages":"hi"` + strings.Repeat(`,"stream":1`, 2000) + `}`)
	allocs := testing.AllocsPerRun(3, func() {
		b, err := prefillBody(body, true)
		if err != nil || bytes.Count(b, []byte(`"stream"`)) != 1 {
			t.Fatalf("%v: %.200s", err, b)
		}
	})
	require.LessOrEqual(t, allocs, 10.0)
}
