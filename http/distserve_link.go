package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// maxLinkAnswer bounds what the proxy reads of one /distserve/* answer.
const maxLinkAnswer = 1 << 20

// NewLinkIO returns the network side of the DistServe link actors: the /distserve/* calls of
// LMDeploy's proxy (lmdeploy/pytorch/disagg/conn/proxy_conn.py), sent through client with cfg's
// migration protocol, RDMA link type and GPU Direct RDMA setting. It fails on a protocol or link
// type it does not know.
func NewLinkIO(cfg *DistServeConfig, client *http.Client) (actors.LinkIO, error) {
	protocol, linkType, err := parseDistServe(cfg)
	if err != nil {
		return nil, err
	}
	return &linkIO{client: client, protocol: protocol, linkType: linkType, withGDR: !cfg.DisableGDR}, nil
}

type linkIO struct {
	client   *http.Client
	protocol messages.MigrationProtocol
	linkType messages.RDMALinkType
	withGDR  bool
}

// initRequest is LMDeploy's DistServeInitRequest. Engine configs and endpoints pass through as the
// replicas wrote them, so fields a newer LMDeploy adds survive the trip.
type initRequest struct {
	LocalEngineID      string                     `json:"local_engine_id"`
	LocalEngineConfig  json.RawMessage            `json:"local_engine_config"`
	RemoteEngineID     string                     `json:"remote_engine_id"`
	RemoteEngineConfig json.RawMessage            `json:"remote_engine_config"`
	Protocol           messages.MigrationProtocol `json:"protocol"`
	Rank               *int                       `json:"rank"`
	TCPConfig          *struct{}                  `json:"tcp_config"`
	RDMAConfig         *rdmaConfig                `json:"rdma_config"`
	NVLinkConfig       *struct{}                  `json:"nvlink_config"`
}

// rdmaConfig is LMDeploy's DistServeRDMAConfig. GPU Direct RDMA is on unless --disable-gdr (LMDeploy's
// proxy accepts that flag but always sends true).
type rdmaConfig struct {
	WithGDR  bool                  `json:"with_gdr"`
	LinkType messages.RDMALinkType `json:"link_type"`
}

// endpoints is what p2p_initialize answers (DistServeInitResponse) and p2p_connect passes on.
type endpoints struct {
	Engine     json.RawMessage `json:"engine_endpoint_info"`
	KVTransfer json.RawMessage `json:"kvtransfer_endpoint_info"`
}

// connectRequest is LMDeploy's DistServeConnectionRequest.
type connectRequest struct {
	Protocol                     messages.MigrationProtocol `json:"protocol"`
	RemoteEngineID               string                     `json:"remote_engine_id"`
	RemoteEngineEndpointInfo     json.RawMessage            `json:"remote_engine_endpoint_info"`
	RemoteKVTransferEndpointInfo json.RawMessage            `json:"remote_kvtransfer_endpoint_info"`
}

// Connect runs LMDeploy's sequence: engine_info of both replicas, p2p_initialize of both (each with
// both configs), then p2p_connect of both (each with the other's endpoints).
func (l *linkIO) Connect(ctx context.Context, p messages.Pair) error {
	pInfo, err := l.engineInfo(ctx, p.Prefill)
	if err != nil {
		return err
	}
	dInfo, err := l.engineInfo(ctx, p.Decode)
	if err != nil {
		return err
	}
	// LMDeploy links only engines of the same tensor parallelism (proxy_conn.py asserts it): the KV
	// cache's layout follows it.
	pTP, dTP := gjson.GetBytes(pInfo, "tp_size"), gjson.GetBytes(dInfo, "tp_size")
	if pTP.Exists() && dTP.Exists() && pTP.Raw != dTP.Raw {
		return fmt.Errorf("the Prefill replica %s has tp_size %s and the Decode replica %s tp_size %s: "+
			"only engines of the same tensor parallelism can be linked", p.Prefill, pTP.Raw, p.Decode, dTP.Raw)
	}
	pEnds, err := l.initialize(ctx, p.Prefill, pInfo, p.Decode, dInfo)
	if err != nil {
		return err
	}
	dEnds, err := l.initialize(ctx, p.Decode, dInfo, p.Prefill, pInfo)
	if err != nil {
		return err
	}
	if err := l.connect(ctx, p.Prefill, p.Decode, dEnds); err != nil {
		return err
	}
	return l.connect(ctx, p.Decode, p.Prefill, pEnds)
}

// engineInfo reads a replica's engine config. LMDeploy's handler returns model_dump_json(), which
// FastAPI encodes once more, so the body is a JSON string holding the object; the object itself is
// accepted too.
func (l *linkIO) engineInfo(ctx context.Context, url string) (json.RawMessage, error) {
	b, err := l.call(ctx, http.MethodGet, url, "/distserve/engine_info", nil)
	if err != nil {
		return nil, err
	}
	v := gjson.ParseBytes(b)
	if v.Type == gjson.String {
		v = gjson.Parse(v.Str)
	}
	if !v.IsObject() {
		return nil, fmt.Errorf("GET %s/distserve/engine_info answered %.200s, not an engine config", url, b)
	}
	return json.RawMessage(v.Raw), nil
}

// initialize asks local to prepare a link to remote and returns local's endpoints.
func (l *linkIO) initialize(ctx context.Context, local string, localInfo json.RawMessage, remote string, remoteInfo json.RawMessage) (endpoints, error) {
	req := initRequest{LocalEngineID: local, LocalEngineConfig: localInfo, RemoteEngineID: remote,
		RemoteEngineConfig: remoteInfo, Protocol: l.protocol}
	if l.protocol == messages.RDMA {
		req.RDMAConfig = &rdmaConfig{WithGDR: l.withGDR, LinkType: l.linkType}
	}
	b, err := l.call(ctx, http.MethodPost, local, "/distserve/p2p_initialize", req)
	if err != nil {
		return endpoints{}, err
	}
	var ends endpoints
	if err := json.Unmarshal(b, &ends); err != nil || !succeeded(b) || isNull(ends.Engine) || isNull(ends.KVTransfer) {
		return endpoints{}, fmt.Errorf("POST %s/distserve/p2p_initialize did not succeed: %.200s", local, b)
	}
	return ends, nil
}

// connect tells local to connect to remote, whose endpoints initialize returned.
func (l *linkIO) connect(ctx context.Context, local, remote string, remoteEnds endpoints) error {
	b, err := l.call(ctx, http.MethodPost, local, "/distserve/p2p_connect", connectRequest{Protocol: l.protocol,
		RemoteEngineID: remote, RemoteEngineEndpointInfo: remoteEnds.Engine, RemoteKVTransferEndpointInfo: remoteEnds.KVTransfer})
	if err != nil {
		return err
	}
	if !succeeded(b) {
		return fmt.Errorf("POST %s/distserve/p2p_connect did not succeed: %.200s", local, b)
	}
	return nil
}

// Drop tells each replica of p to forget the other, as LMDeploy's proxy does when a replica leaves.
func (l *linkIO) Drop(ctx context.Context, p messages.Pair) error {
	drop := func(engine, remote string) error {
		_, err := l.call(ctx, http.MethodPost, engine, "/distserve/p2p_drop_connect",
			map[string]string{"engine_id": engine, "remote_engine_id": remote})
		return err
	}
	return errors.Join(drop(p.Prefill, p.Decode), drop(p.Decode, p.Prefill))
}

// FreeCache frees one prefill session's kept KV cache (DistServeCacheFreeRequest).
func (l *linkIO) FreeCache(ctx context.Context, prefill string, session int64) error {
	_, err := l.call(ctx, http.MethodPost, prefill, "/distserve/free_cache",
		map[string]any{"remote_engine_id": prefill, "remote_session_id": session})
	return err
}

// call sends one request to path on replica (with body as JSON unless nil) and returns a 2xx answer's
// body; any other answer is an error that names the call, the status and the replica's message, and a
// replica that cannot be connected to is an *unreachableError.
func (l *linkIO) call(ctx context.Context, method, replica, path string, body any) ([]byte, error) {
	url := replica + path
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := l.client.Do(req)
	if err != nil {
		if dialFailed(err) {
			return nil, &unreachableError{replica: replica, err: err}
		}
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLinkAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s answered HTTP %d: %s", method, url, resp.StatusCode, replicaMessage(b))
	}
	return b, nil
}

// unreachableError is a /distserve/* call that could not connect to its replica: nothing was sent
// to it. A link has two replicas; this names the one, so that a request can try another of its role.
type unreachableError struct {
	replica string
	err     error
}

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// unreachable reports whether err says that replica could not be connected to.
func unreachable(err error, replica string) bool {
	u, ok := errors.AsType[*unreachableError](err)
	return ok && u.replica == replica
}

// succeeded reports whether an answer's status is DistServeConnectionStatus.SUCCESS: FastAPI sends the
// enum's value, 1; the name is accepted too.
func succeeded(b []byte) bool {
	st := gjson.GetBytes(b, "status")
	return (st.Type == gjson.Number && st.Num == 1) || (st.Type == gjson.String && strings.EqualFold(st.Str, "SUCCESS"))
}

// isNull reports whether a raw JSON value is absent or null.
func isNull(v json.RawMessage) bool {
	return len(v) == 0 || string(v) == "null"
}
