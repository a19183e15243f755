package proxytest

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// genRequest holds the fields of a chat or completions body the fake reads.
type genRequest struct {
	Model               string `json:"model"`
	Stream              bool   `json:"stream"`
	MaxTokens           *int   `json:"max_tokens"`
	MaxCompletionTokens *int   `json:"max_completion_tokens"`
	WithCache           bool   `json:"with_cache"`
	PreserveCache       bool   `json:"preserve_cache"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// answer is what one generation produces, for either endpoint and format.
type answer struct {
	chat         bool
	id           string
	created      int64
	model        string
	n, prompt    int
	includeUsage bool
	withCache    bool
	blocks       []int64
	lastToken    int64
}

// Chunk and body shapes follow LMDeploy's protocol.py; fields LMDeploy
// leaves out of streams (exclude_none) are left out here too.
type message struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

type choice struct {
	Index        int      `json:"index"`
	Message      *message `json:"message,omitempty"`
	Delta        *message `json:"delta,omitempty"`
	Text         *string  `json:"text,omitempty"`
	FinishReason *string  `json:"finish_reason,omitempty"`
}

type usageInfo struct {
	PromptTokens        int `json:"prompt_tokens"`
	TotalTokens         int `json:"total_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

type completion struct {
	ID             string          `json:"id"`
	Object         string          `json:"object"`
	Created        int64           `json:"created"`
	Model          string          `json:"model"`
	Choices        []choice        `json:"choices"`
	Usage          json.RawMessage `json:"usage,omitempty"`
	CacheBlockIDs  []int64         `json:"cache_block_ids,omitempty"`
	RemoteTokenIDs []int64         `json:"remote_token_ids,omitempty"`
}

func (r *Replica) handleChat(w http.ResponseWriter, req *http.Request, body []byte) {
	r.generate(w, req, body, true)
}

func (r *Replica) handleCompletions(w http.ResponseWriter, req *http.Request, body []byte) {
	r.generate(w, req, body, false)
}

func (r *Replica) generate(w http.ResponseWriter, req *http.Request, body []byte, chat bool) {
	cut, done := r.applyFault(w, req, gjson.GetBytes(body, "stream").Bool())
	if done {
		return
	}
	// LMDeploy's validate_json_request dependency.
	if mt, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); mt != "application/json" {
		writeError(w, http.StatusBadRequest, "Unsupported Media Type: Only 'application/json' is allowed")
		return
	}
	var g genRequest
	if err := json.Unmarshal(body, &g); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	if g.Model == "" {
		writeError(w, http.StatusBadRequest, "model: Field required")
		return
	}
	if !r.serves(g.Model) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("The model '%s' does not exist.", g.Model))
		return
	}
	// max_completion_tokens wins over the deprecated max_tokens, as in
	// LMDeploy's build_serving_generation_config.
	limit := g.MaxCompletionTokens
	if limit == nil {
		limit = g.MaxTokens
	}
	if limit != nil && *limit <= 0 {
		writeError(w, http.StatusBadRequest, "max_tokens must be a positive integer")
		return
	}
	if mr := gjson.GetBytes(body, "migration_request"); mr.Exists() && mr.Type != gjson.Null {
		if msg := checkMigrationRequest(mr); msg != "" {
			writeError(w, http.StatusBadRequest, msg)
			return
		}
	}

	r.mu.Lock()
	ttft, itl, n := r.ttft, r.itl, r.tokens
	r.mu.Unlock()
	if limit != nil && *limit < n {
		n = *limit
	}
	seq := r.seq.Add(1)
	a := answer{
		chat: chat, created: time.Now().Unix(), model: g.Model, n: n,
		prompt:       promptTokens(body),
		includeUsage: g.StreamOptions != nil && g.StreamOptions.IncludeUsage,
		withCache:    g.WithCache,
	}
	switch {
	case g.WithCache:
		// LMDeploy's proxy reads the prefill answer's id with int(): the
		// session id as a decimal string.
		a.id = strconv.FormatInt(seq, 10)
		for i := range max(1, (a.prompt+blockSize-1)/blockSize) {
			a.blocks = append(a.blocks, seq*1000+int64(i))
		}
		a.lastToken = 1000 + seq
	case chat:
		a.id = "chatcmpl-" + strconv.FormatInt(seq, 10)
	default:
		a.id = "cmpl-" + strconv.FormatInt(seq, 10)
	}
	keep := func() {
		if g.WithCache && g.PreserveCache {
			r.mu.Lock()
			r.cached[seq] = true
			r.mu.Unlock()
		}
	}
	if g.Stream {
		r.stream(req.Context(), w, a, ttft, itl, cut, keep)
		return
	}
	if !sleepCtx(req.Context(), ttft+time.Duration(n-1)*itl) {
		r.stopped()
		return
	}
	keep()
	writeJSON(w, http.StatusOK, a.full())
}

// applyFault answers per the current Fault. done means the request was
// answered; cut is the stream's CutAfter to honour.
func (r *Replica) applyFault(w http.ResponseWriter, req *http.Request, stream bool) (cut int, done bool) {
	r.mu.Lock()
	f := r.fault
	r.mu.Unlock()
	switch {
	case f.Hang:
		<-req.Context().Done()
		r.stopped()
		return 0, true
	case f.Status != 0:
		if f.Body == "" {
			writeError(w, f.Status, "simulated failure")
		} else {
			writeRawJSON(w, f.Status, []byte(f.Body))
		}
		return 0, true
	case f.CutAfter < 0, f.CutAfter > 0 && !stream:
		abortConn()
	}
	return f.CutAfter, false
}

// stream writes one SSE event per token, then the usage event when asked
// for, then [DONE], flushing each; every wait also watches the client.
func (r *Replica) stream(ctx context.Context, w http.ResponseWriter, a answer, ttft, itl time.Duration, cut int, keep func()) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		r.stopped()
		return
	}
	events := 0
	emit := func(data []byte) bool {
		if cut > 0 && events == cut {
			abortConn()
		}
		if ctx.Err() != nil {
			r.stopped()
			return false
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
			r.stopped()
			return false
		}
		if rc.Flush() != nil {
			r.stopped()
			return false
		}
		events++
		return true
	}
	for i := range a.n {
		d := itl
		if i == 0 {
			d = ttft
		}
		if !sleepCtx(ctx, d) {
			r.stopped()
			return
		}
		if i == a.n-1 {
			keep()
		}
		if !emit(mustJSON(a.chunk(i))) {
			return
		}
	}
	if a.includeUsage && !emit(mustJSON(a.usageChunk())) {
		return
	}
	emit([]byte("[DONE]"))
}

func (a answer) object(chunk bool) string {
	switch {
	case !a.chat:
		return "text_completion"
	case chunk:
		return "chat.completion.chunk"
	}
	return "chat.completion"
}

func (a answer) usage() json.RawMessage {
	u := usageInfo{PromptTokens: a.prompt, CompletionTokens: a.n, TotalTokens: a.prompt + a.n}
	return mustJSON(u)
}

// full is the non-stream body; a prefill answer carries its KV cache blocks
// and last token at the top level, as LMDeploy's serving code adds them.
func (a answer) full() completion {
	text := strings.TrimSpace(strings.Repeat("tok ", a.n))
	finish := "length"
	c := choice{FinishReason: &finish}
	if a.chat {
		c.Message = &message{Role: "assistant", Content: text}
	} else {
		c.Text = &text
	}
	out := completion{ID: a.id, Object: a.object(false), Created: a.created, Model: a.model,
		Choices: []choice{c}, Usage: a.usage()}
	if a.withCache {
		out.CacheBlockIDs = a.blocks
		out.RemoteTokenIDs = []int64{a.lastToken}
	}
	return out
}

// chunk is the event of token i; the last one has finish_reason, and usage
// unless the client asked for a separate usage event (stream_options).
func (a answer) chunk(i int) completion {
	text := " tok"
	if i == 0 {
		text = "tok"
	}
	c := choice{}
	if a.chat {
		c.Delta = &message{Content: text}
		if i == 0 {
			c.Delta.Role = "assistant"
		}
	} else {
		c.Text = &text
	}
	out := completion{ID: a.id, Object: a.object(true), Created: a.created, Model: a.model, Choices: []choice{c}}
	if a.includeUsage {
		out.Usage = json.RawMessage("null")
	}
	if i == a.n-1 {
		finish := "length"
		out.Choices[0].FinishReason = &finish
		if !a.includeUsage {
			out.Usage = a.usage()
		}
		if a.withCache {
			out.CacheBlockIDs = a.blocks
			out.RemoteTokenIDs = []int64{a.lastToken}
		}
	}
	return out
}

func (a answer) usageChunk() completion {
	return completion{ID: a.id, Object: a.object(true), Created: a.created, Model: a.model,
		Choices: []choice{}, Usage: a.usage()}
}

// handleEcho answers any other POST /v1/<x> naming a served model, so tests
// can check generic forwarding.
func (r *Replica) handleEcho(w http.ResponseWriter, req *http.Request, body []byte) {
	if _, done := r.applyFault(w, req, gjson.GetBytes(body, "stream").Bool()); done {
		return
	}
	m := gjson.GetBytes(body, "model")
	if m.Type != gjson.String || m.Str == "" {
		writeError(w, http.StatusBadRequest, "model: Field required")
		return
	}
	if !r.serves(m.Str) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("The model '%s' does not exist.", m.Str))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"object": "echo", "path": req.URL.Path, "model": m.Str})
}

// promptTokens estimates the prompt length: words of the text in messages
// or prompt, or the number of token ids given.
func promptTokens(body []byte) int {
	n := 0
	var walk func(v gjson.Result)
	walk = func(v gjson.Result) {
		switch {
		case v.Type == gjson.String:
			n += len(strings.Fields(v.Str))
		case v.Type == gjson.Number:
			n++
		case v.IsArray():
			for _, e := range v.Array() {
				walk(e)
			}
		case v.IsObject():
			walk(v.Get("content"))
			walk(v.Get("text"))
		}
	}
	walk(gjson.GetBytes(body, "messages"))
	walk(gjson.GetBytes(body, "prompt"))
	return max(n, 1)
}

// sleepCtx waits d and reports false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
