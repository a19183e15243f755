package proxytest

import (
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
)

// blockSize is the KV cache block size the fake reports in engine_info and
// uses to size cache_block_ids.
const blockSize = 64

// engineInfo is LMDeploy's DistServeEngineConfig
// (lmdeploy/pytorch/disagg/config.py), in its field order.
type engineInfo struct {
	TPSize       int  `json:"tp_size"`
	EPSize       int  `json:"ep_size"`
	DPSize       int  `json:"dp_size"`
	PPSize       *int `json:"pp_size"`
	DPRank       int  `json:"dp_rank"`
	BlockSize    int  `json:"block_size"`
	NumCPUBlocks int  `json:"num_cpu_blocks"`
	NumGPUBlocks int  `json:"num_gpu_blocks"`
}

// distServeStatusSuccess is DistServeConnectionStatus.SUCCESS as FastAPI
// encodes the enum: its value.
const distServeStatusSuccess = 1

// distFault answers the fault set by SetDistServeFault for path, if any.
func (r *Replica) distFault(w http.ResponseWriter, path string) bool {
	r.mu.Lock()
	status := r.dsFaults[path]
	r.mu.Unlock()
	if status == 0 {
		return false
	}
	writeError(w, status, "simulated distserve failure")
	return true
}

// parseBody checks body against rule and answers 400 when it does not fit,
// as LMDeploy's validation handler does for a pydantic error.
func parseBody(w http.ResponseWriter, body []byte, rule rule) (gjson.Result, bool) {
	if !gjson.ValidBytes(body) {
		writeError(w, http.StatusBadRequest, "JSON decode error")
		return gjson.Result{}, false
	}
	v := gjson.ParseBytes(body)
	if msg := rule(v); msg != "" {
		writeError(w, http.StatusBadRequest, strings.TrimPrefix(msg, ": "))
		return v, false
	}
	return v, true
}

func (r *Replica) handleEngineInfo(w http.ResponseWriter, req *http.Request, _ []byte) {
	if r.distFault(w, req.URL.Path) {
		return
	}
	b := mustJSON(engineInfo{TPSize: max(r.cfg.TPSize, 1), EPSize: 1, DPSize: 1, BlockSize: blockSize, NumGPUBlocks: 1024})
	r.mu.Lock()
	asString := r.engineInfoStr
	r.mu.Unlock()
	if asString {
		b = mustJSON(string(b))
	}
	writeRawJSON(w, http.StatusOK, b)
}

// handleP2PInitialize answers a DistServeInitRequest with a
// DistServeInitResponse (lmdeploy/pytorch/disagg/conn/protocol.py).
func (r *Replica) handleP2PInitialize(w http.ResponseWriter, req *http.Request, body []byte) {
	if r.distFault(w, req.URL.Path) {
		return
	}
	v, ok := parseBody(w, body, initRequestRule)
	if !ok {
		return
	}
	local, remote := v.Get("local_engine_id").Str, v.Get("remote_engine_id").Str
	protocol := v.Get("protocol").Int()
	r.mu.Lock()
	if _, known := r.peers[remote]; !known {
		r.peers[remote] = false
	}
	r.mu.Unlock()

	// The real engine binds a ZMQ socket on local_engine_id's host and
	// returns the transfer engine's endpoint as a JSON string.
	host := "127.0.0.1"
	if u, err := url.Parse(local); err == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	endpoint := mustJSON(map[string]any{"simulated": true, "engine_id": local, "remote_engine_id": remote})
	writeJSON(w, http.StatusOK, map[string]any{
		"status": distServeStatusSuccess,
		"engine_endpoint_info": map[string]string{
			"zmq_address": "tcp://" + host + ":" + strconv.FormatInt(20000+r.seq.Add(1)%10000, 10),
		},
		"kvtransfer_endpoint_info": []map[string]any{{"protocol": protocol, "endpoint_info": string(endpoint)}},
	})
}

// handleP2PConnect answers a DistServeConnectionRequest. Like the real
// engine, it fails for a remote engine that was never initialized.
func (r *Replica) handleP2PConnect(w http.ResponseWriter, req *http.Request, body []byte) {
	if r.distFault(w, req.URL.Path) {
		return
	}
	v, ok := parseBody(w, body, connRequestRule)
	if !ok {
		return
	}
	remote := v.Get("remote_engine_id").Str
	r.mu.Lock()
	_, known := r.peers[remote]
	if known {
		r.peers[remote] = true
	}
	r.mu.Unlock()
	if !known {
		writeError(w, http.StatusInternalServerError,
			fmt.Sprintf("p2p_connect: remote engine %q was not initialized by p2p_initialize", remote))
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"status": distServeStatusSuccess})
}

func (r *Replica) handleP2PDropConnect(w http.ResponseWriter, req *http.Request, body []byte) {
	if r.distFault(w, req.URL.Path) {
		return
	}
	v, ok := parseBody(w, body, dropConnRule)
	if !ok {
		return
	}
	r.mu.Lock()
	delete(r.peers, v.Get("remote_engine_id").Str)
	r.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

// handleFreeCache answers a DistServeCacheFreeRequest and forgets the
// session's kept cache.
func (r *Replica) handleFreeCache(w http.ResponseWriter, req *http.Request, body []byte) {
	if r.distFault(w, req.URL.Path) {
		return
	}
	v, ok := parseBody(w, body, freeCacheRule)
	if !ok {
		return
	}
	r.mu.Lock()
	delete(r.cached, v.Get("remote_session_id").Int())
	r.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"status": "SUCCESS"})
}

// checkMigrationRequest validates a decode request's migration_request.
func checkMigrationRequest(v gjson.Result) string {
	if msg := migrationRule(v); msg != "" {
		return joinLoc("migration_request", msg)
	}
	return ""
}

// A rule checks one JSON value the way the pydantic models of
// lmdeploy/pytorch/disagg/conn/protocol.py would, and returns "loc: msg"
// for the first problem or "". It is stricter than pydantic's lax mode:
// numbers must be JSON numbers, not strings.
type rule func(v gjson.Result) string

type field struct {
	name     string
	rule     rule
	optional bool // may be absent
	nullable bool // may be null
}

// need is a required field, needNull a required field that may be null,
// opt a field that may be absent or null.
func need(name string, r rule) field     { return field{name, r, false, false} }
func needNull(name string, r rule) field { return field{name, r, false, true} }
func opt(name string, r rule) field      { return field{name, r, true, true} }

func object(fields ...field) rule {
	return func(v gjson.Result) string {
		if !v.IsObject() {
			return ": Input should be a valid dictionary or object"
		}
		for _, f := range fields {
			fv := v.Get(gjson.Escape(f.name))
			switch {
			case !fv.Exists() && f.optional:
			case !fv.Exists():
				return f.name + ": Field required"
			case fv.Type == gjson.Null && f.nullable:
			default:
				if msg := f.rule(fv); msg != "" {
					return joinLoc(f.name, msg)
				}
			}
		}
		return ""
	}
}

func listOf(item rule) rule {
	return func(v gjson.Result) string {
		if !v.IsArray() {
			return ": Input should be a valid list"
		}
		for i, e := range v.Array() {
			if msg := item(e); msg != "" {
				return joinLoc(strconv.Itoa(i), msg)
			}
		}
		return ""
	}
}

// joinLoc prefixes a nested location: "a" + ": msg" or "a" + "b: msg".
func joinLoc(name, msg string) string {
	if msg[0] == ':' {
		return name + msg
	}
	return name + "." + msg
}

func isString(v gjson.Result) string {
	if v.Type != gjson.String {
		return ": Input should be a valid string"
	}
	return ""
}

func isInt(v gjson.Result) string {
	if v.Type != gjson.Number || v.Num != math.Trunc(v.Num) {
		return ": Input should be a valid integer"
	}
	return ""
}

func isBool(v gjson.Result) string {
	if !v.IsBool() {
		return ": Input should be a valid boolean"
	}
	return ""
}

// enumOf accepts the values of an LMDeploy enum.Enum with auto() members.
func enumOf(n int) rule {
	return func(v gjson.Result) string {
		if isInt(v) != "" || v.Int() < 1 || v.Int() > int64(n) {
			return fmt.Sprintf(": Input should be one of 1..%d", n)
		}
		return ""
	}
}

// MigrationProtocol: TCP=1, RDMA=2, NVLINK=3; RDMALinkType: IB=1, RoCE=2.
var (
	protocolRule     = enumOf(3)
	engineConfigRule = object(need("tp_size", isInt), need("ep_size", isInt), need("dp_size", isInt),
		needNull("pp_size", isInt), need("dp_rank", isInt), need("block_size", isInt),
		need("num_cpu_blocks", isInt), need("num_gpu_blocks", isInt))
	initRequestRule = object(need("local_engine_id", isString), need("local_engine_config", engineConfigRule),
		need("remote_engine_id", isString), need("remote_engine_config", engineConfigRule),
		need("protocol", protocolRule), opt("rank", isInt), opt("tcp_config", object()),
		opt("rdma_config", object(opt("with_gdr", isBool), opt("link_type", enumOf(2)))),
		opt("nvlink_config", object()))
	connRequestRule = object(need("protocol", protocolRule), need("remote_engine_id", isString),
		need("remote_engine_endpoint_info", object(need("zmq_address", isString))),
		need("remote_kvtransfer_endpoint_info", listOf(object(need("protocol", protocolRule), need("endpoint_info", isString)))))
	dropConnRule  = object(need("engine_id", isString), need("remote_engine_id", isString))
	freeCacheRule = object(need("remote_engine_id", isString), need("remote_session_id", isInt))
	migrationRule = object(need("protocol", protocolRule), need("remote_engine_id", isString),
		need("remote_session_id", isInt), need("remote_token_id", isInt), need("remote_block_ids", listOf(isInt)),
		opt("is_dummy_prefill", isBool))
)
