package http

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/tidwall/gjson"

	"github.com/lmproxy/lmproxy/messages"
)

// maxPrefillAnswer bounds what the proxy reads of a prefill answer: one token and the prompt's block
// ids, a few KiB even for long prompts.
const maxPrefillAnswer = 16 << 20

// prefillInfo is what a prefill answer tells the Decode replica: the session that keeps the prompt's KV
// cache, its blocks and the last token.
type prefillInfo struct {
	session int64
	blocks  []int64
	token   int64
}

// prefill sends the prefill request to the leased Prefill replica and releases its lease as soon as
// the answer is in, exactly once, a panic included. It runs under the client's context, so a client
// that leaves cancels it. It returns how the exchange went for the replica too.
func (s *Server) prefill(w http.ResponseWriter, r *http.Request, l messages.Lease, body []byte) (prefillInfo, messages.Outcome, error) {
	outcome, start := messages.Panic, time.Now()
	defer func() { s.reg.Release(l, outcome, time.Since(start)) }()
	t := track(w)
	t.replica = l.URL
	info, outcome, err := s.askPrefill(r, t.id, l.URL, body)
	if err != nil {
		t.setOutcome(outcome)
	}
	return info, outcome, err
}

// askPrefill runs one prefill exchange and reports how it went for the replica.
func (s *Server) askPrefill(r *http.Request, requestID, target string, body []byte) (prefillInfo, messages.Outcome, error) {
	pbody, err := prefillBody(body, r.URL.Path == "/v1/chat/completions")
	if err != nil {
		return prefillInfo{}, messages.Unused, err
	}
	ctx, cancel := s.upstreamContext(r.Context())
	defer cancel()
	var set [5]header
	req := replicaRequest{method: http.MethodPost, target: target, uri: r.URL.RequestURI(), client: r,
		set:  append(forwardedHeaders(set[:0], r, requestID), header{"Content-Type", "application/json"}),
		drop: "Accept-Encoding", // the proxy reads this answer itself: no compression
		body: pbody}
	resp, err := s.upstream.RoundTrip(ctx, &req)
	if err != nil {
		o, err := prefillFailure(r, ctx, target, err)
		return prefillInfo{}, o, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxPrefillAnswer))
	if err != nil {
		o, err := prefillFailure(r, ctx, target, err)
		return prefillInfo{}, o, err
	}
	if resp.StatusCode >= 300 {
		return prefillInfo{}, statusOutcome(resp.StatusCode), errorf(http.StatusBadGateway,
			fmt.Sprintf("the Prefill replica %s answered HTTP %d: %s", target, resp.StatusCode, replicaMessage(answer)))
	}
	info, err := parsePrefillAnswer(answer)
	if err != nil {
		return prefillInfo{}, messages.OK, errorf(http.StatusBadGateway, "cannot migrate from the Prefill replica "+target+": "+err.Error())
	}
	return info, messages.OK, nil
}

// prefillFailure maps a prefill exchange that broke to its outcome and the client's error.
func prefillFailure(r *http.Request, ctx context.Context, target string, err error) (messages.Outcome, error) {
	switch {
	case r.Context().Err() != nil:
		return messages.ClientGone, errClientGone
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return messages.Timeout, errorf(http.StatusGatewayTimeout, "the Prefill replica "+target+" did not answer within the upstream timeout")
	case isDialError(err):
		return messages.DialError, errorf(http.StatusBadGateway, "cannot reach the Prefill replica "+target+": "+err.Error())
	}
	return messages.UpstreamError, errorf(http.StatusBadGateway, "the Prefill replica "+target+" failed: "+err.Error())
}

// prefillBody is the client's body set up for the prefill phase, as LMDeploy's proxy sends it: one
// token, no stream, and the KV cache kept for the Decode replica to pull. The rest keeps its bytes.
// LMDeploy's proxy sets max_completion_tokens for chat only; a completion that carries one gets it set
// too, since it wins over max_tokens and the prefill would otherwise generate the whole answer.
func prefillBody(body []byte, chat bool) ([]byte, error) {
	fields := []jsonField{{"max_tokens", "1"}, {"stream", "false"}, {"with_cache", "true"}, {"preserve_cache", "true"}}
	if chat || gjson.GetBytes(body, "max_completion_tokens").Exists() {
		fields = append(fields, jsonField{"max_completion_tokens", "1"})
	}
	return setFields(body, fields)
}

// jsonField is a top-level key and the JSON text of its value.
type jsonField struct{ key, raw string }

// setFields sets the fields of the JSON object body, each as the only key of its name: sjson sets
// the first of a client's duplicated keys, and the replica's parser takes the last, so a later copy
// would undo the proxy's value. One pass over body, whatever its copies: the members not set keep
// their bytes and order, the set ones come last.
func setFields(body []byte, fields []jsonField) ([]byte, error) {
	obj := gjson.ParseBytes(body)
	if !obj.IsObject() {
		return nil, errors.New("the request is not a JSON object")
	}
	out := make([]byte, 0, len(body)+32*len(fields))
	out = append(out, '{')
	obj.ForEach(func(k, v gjson.Result) bool {
		for _, f := range fields {
			if k.Str == f.key {
				return true
			}
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(append(append(out, k.Raw...), ':'), v.Raw...)
		return true
	})
	for _, f := range fields {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = strconv.AppendQuote(out, f.key)
		out = append(append(out, ':'), f.raw...)
	}
	return append(out, '}'), nil
}

// parsePrefillAnswer reads the session, blocks and last token of a prefill answer. Missing blocks or
// tokens count as none, as in LMDeploy's proxy.
func parsePrefillAnswer(b []byte) (prefillInfo, error) {
	if !gjson.ValidBytes(b) {
		return prefillInfo{}, errors.New("its answer is not JSON")
	}
	res := gjson.GetManyBytes(b, "id", "cache_block_ids", "remote_token_ids")
	session, err := sessionID(res[0])
	if err != nil {
		return prefillInfo{}, err
	}
	blocks, err := intList(res[1], "cache_block_ids")
	if err != nil {
		return prefillInfo{}, err
	}
	tokens, err := intList(res[2], "remote_token_ids")
	if err != nil {
		return prefillInfo{}, err
	}
	info := prefillInfo{session: session, blocks: blocks}
	if len(tokens) > 0 {
		info.token = tokens[len(tokens)-1]
	}
	return info, nil
}

// sessionID reads the prefill session from the answer's id: LMDeploy answers it as a decimal string
// (str(session_id)). Newer LMDeploy versions answer chat with "chatcmpl-<random>", and completions
// with "-1" unless the client chose a session: neither names the session that keeps the cache, so
// there is nothing the Decode replica could pull, and guessing one would migrate another request's
// cache. Such an answer fails the request.
func sessionID(v gjson.Result) (int64, error) {
	if !v.Exists() || v.Type == gjson.Null {
		return 0, errors.New("its answer has no id (the prefill session)")
	}
	raw := v.Raw
	if v.Type == gjson.String {
		raw = v.Str
	}
	if n, err := strconv.ParseInt(raw, 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	return 0, fmt.Errorf("its answer's id %s is not a prefill session id; DistServe needs a replica "+
		"that answers its session id (LMDeploy's str(session_id))", v.Raw)
}

// intList reads a JSON list of integers; absent or null is an empty list.
func intList(v gjson.Result, name string) ([]int64, error) {
	if !v.Exists() || v.Type == gjson.Null {
		return []int64{}, nil
	}
	if !v.IsArray() {
		return nil, errors.New("its answer's " + name + " is not a list")
	}
	items := v.Array()
	out := make([]int64, len(items))
	for i, it := range items {
		n, err := strconv.ParseInt(it.Raw, 10, 64)
		if it.Type != gjson.Number || err != nil {
			return nil, fmt.Errorf("its answer's %s holds %s, not an integer", name, it.Raw)
		}
		out[i] = n
	}
	return out, nil
}

// replicaMessage is the message of a replica's error body: OpenAI's error.message, LMDeploy's flat
// message, FastAPI's detail, or the body itself, cut short.
func replicaMessage(b []byte) string {
	for _, path := range []string{"error.message", "message", "detail"} {
		if v := gjson.GetBytes(b, path); v.Type == gjson.String && v.Str != "" {
			return v.Str
		}
	}
	b = bytes.TrimSpace(b)
	if len(b) > 512 {
		b = append(b[:512:512], "…"...)
	}
	if len(b) == 0 {
		return "(no body)"
	}
	return string(b)
}
