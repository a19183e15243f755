package proxytest

import (
	"encoding/json"
	"io"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// engineConfig is what LMDeploy's proxy passes on from engine_info.
const engineConfig = `{"tp_size":1,"ep_size":1,"dp_size":1,"pp_size":null,"dp_rank":0,"block_size":64,"num_cpu_blocks":0,"num_gpu_blocks":1024}`

// initRequest is a DistServeInitRequest as LMDeploy's proxy_conn.py sends it.
func initRequest(local, remote string) string {
	return `{"local_engine_id":"` + local + `","local_engine_config":` + engineConfig +
		`,"remote_engine_id":"` + remote + `","remote_engine_config":` + engineConfig +
		`,"protocol":2,"rank":null,"tcp_config":null,"rdma_config":{"with_gdr":true,"link_type":2},"nvlink_config":null}`
}

func TestReplicaEngineInfo(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Role: "Prefill"})
	c := newClient(t)

	// Default: a JSON string holding the object, as LMDeploy answers.
	b, err := io.ReadAll(mustGet(t, c, r.URL+"/distserve/engine_info").Body)
	require.NoError(t, err)
	var s string
	require.NoError(t, json.Unmarshal(b, &s))
	require.JSONEq(t, engineConfig, s)

	r.SetEngineInfoAsString(false)
	b, err = io.ReadAll(mustGet(t, c, r.URL+"/distserve/engine_info").Body)
	require.NoError(t, err)
	require.JSONEq(t, engineConfig, string(b))
	require.Len(t, r.Requests("/distserve/engine_info"), 2)
}

func TestReplicaP2PConnect(t *testing.T) {
	const decode = "http://127.0.0.1:1"
	r := StartReplica(t, ReplicaConfig{Role: "Prefill"})
	c := newClient(t)

	// p2p_connect before p2p_initialize fails, as the engine would.
	connect := `{"protocol":2,"remote_engine_id":"` + decode + `","remote_engine_endpoint_info":{"zmq_address":"tcp://127.0.0.1:5555"},` +
		`"remote_kvtransfer_endpoint_info":[{"protocol":2,"endpoint_info":"{}"}]}`
	require.Equal(t, 500, mustPost(t, c, r.URL+"/distserve/p2p_connect", connect).StatusCode)

	resp := mustPost(t, c, r.URL+"/distserve/p2p_initialize", initRequest(r.URL, decode))
	require.Equal(t, 200, resp.StatusCode)
	m := decodeJSON(t, resp)
	require.EqualValues(t, 1, m["status"])
	require.Regexp(t, `^tcp://127\.0\.0\.1:\d+$`, m["engine_endpoint_info"].(map[string]any)["zmq_address"])
	kv := m["kvtransfer_endpoint_info"].([]any)
	require.Len(t, kv, 1)
	require.EqualValues(t, 2, kv[0].(map[string]any)["protocol"])
	require.True(t, json.Valid([]byte(kv[0].(map[string]any)["endpoint_info"].(string))))
	require.False(t, r.Connected(decode))

	resp = mustPost(t, c, r.URL+"/distserve/p2p_connect", connect)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, map[string]any{"status": 1.0}, decodeJSON(t, resp))
	require.True(t, r.Connected(decode))

	resp = mustPost(t, c, r.URL+"/distserve/p2p_drop_connect", `{"engine_id":"`+r.URL+`","remote_engine_id":"`+decode+`"}`)
	require.Equal(t, map[string]any{"success": true}, decodeJSON(t, resp))
	require.False(t, r.Connected(decode))
	require.Len(t, r.Received(), 4)
}

func TestReplicaDistServeValidation(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	for _, tc := range []struct{ path, body, msg string }{
		{"/distserve/p2p_initialize", `{}`, "local_engine_id: Field required"},
		{"/distserve/p2p_initialize", `[1]`, "Input should be a valid dictionary or object"},
		{"/distserve/p2p_initialize", `{"local_engine_id":"a","local_engine_config":{"tp_size":1},"remote_engine_id":"b"}`,
			"local_engine_config.ep_size: Field required"},
		{"/distserve/p2p_initialize", `{"local_engine_id":"a","local_engine_config":` + engineConfig +
			`,"remote_engine_id":"b","remote_engine_config":` + engineConfig + `,"protocol":"RDMA"}`,
			"protocol: Input should be one of 1..3"},
		{"/distserve/p2p_connect", `{"protocol":2,"remote_engine_id":"b","remote_engine_endpoint_info":{},"remote_kvtransfer_endpoint_info":[]}`,
			"remote_engine_endpoint_info.zmq_address: Field required"},
		{"/distserve/p2p_connect", `{"protocol":2,"remote_engine_id":"b","remote_engine_endpoint_info":{"zmq_address":"x"},"remote_kvtransfer_endpoint_info":[{"protocol":2}]}`,
			"remote_kvtransfer_endpoint_info.0.endpoint_info: Field required"},
		{"/distserve/free_cache", `{"session_id":3}`, "remote_engine_id: Field required"},
		{"/distserve/free_cache", `{"remote_engine_id":"a","remote_session_id":"3"}`, "remote_session_id: Input should be a valid integer"},
	} {
		resp := mustPost(t, c, r.URL+tc.path, tc.body)
		require.Equal(t, 400, resp.StatusCode, tc.body)
		require.Equal(t, tc.msg, decodeJSON(t, resp)["message"], tc.body)
	}
}

func TestReplicaDistServeFault(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	r.SetDistServeFault("engine_info", 503)
	require.Equal(t, 503, mustGet(t, c, r.URL+"/distserve/engine_info").StatusCode)
	r.SetDistServeFault("/distserve/p2p_initialize", 500)
	require.Equal(t, 500, mustPost(t, c, r.URL+"/distserve/p2p_initialize", initRequest(r.URL, "x")).StatusCode)
	r.SetDistServeFault("engine_info", 0)
	require.Equal(t, 200, mustGet(t, c, r.URL+"/distserve/engine_info").StatusCode)
}

func TestReplicaPrefill(t *testing.T) {
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		t.Run(path, func(t *testing.T) {
			r := StartReplica(t, ReplicaConfig{Role: "Prefill"})
			c := newClient(t)
			// The prefill request LMDeploy's proxy sends.
			body := `{"model":"sim-model","messages":"hi","prompt":"hi","max_tokens":1,"max_completion_tokens":1,` +
				`"stream":false,"with_cache":true,"preserve_cache":true}`
			m := decodeJSON(t, mustPost(t, c, r.URL+path, body))
			id, err := strconv.ParseInt(m["id"].(string), 10, 64)
			require.NoError(t, err, "the prefill id is an integer in a string")
			blocks := m["cache_block_ids"].([]any)
			require.NotEmpty(t, blocks)
			require.Len(t, m["remote_token_ids"], 1)
			require.EqualValues(t, 1, m["usage"].(map[string]any)["completion_tokens"])
			require.Equal(t, []int64{id}, r.CachedSessions())

			resp := mustPost(t, c, r.URL+"/distserve/free_cache", `{"remote_engine_id":"`+r.URL+`","remote_session_id":`+m["id"].(string)+`}`)
			require.Equal(t, map[string]any{"status": "SUCCESS"}, decodeJSON(t, resp))
			require.Empty(t, r.CachedSessions())
		})
	}
}

func TestReplicaDecodeRecordsMigrationRequest(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Role: "Decode", Tokens: 3})
	c := newClient(t)
	mr := `{"protocol":2,"remote_engine_id":"http://p:1","remote_session_id":7,"remote_block_ids":[1,2],"remote_token_id":42,"is_dummy_prefill":false}`
	resp := mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true,"migration_request":`+mr+`}`)
	require.Equal(t, 200, resp.StatusCode)
	events, err := readSSE(resp.Body)
	require.NoError(t, err)
	require.Len(t, events, 4)

	got := r.Requests("/v1/chat/completions")
	require.Len(t, got, 1)
	require.JSONEq(t, mr, string(got[0].MigrationRequest))

	resp = mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","migration_request":{"protocol":2}}`)
	require.Equal(t, 400, resp.StatusCode)
	require.Equal(t, "migration_request.remote_engine_id: Field required", decodeJSON(t, resp)["message"])
}
