package http_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest"
)

// newSDK is the official OpenAI Go SDK pointed at the proxy.
func newSDK(t *testing.T, baseURL string) openai.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return openai.NewClient(
		option.WithBaseURL(baseURL+"/v1/"),
		option.WithAPIKey("unused"),
		option.WithMaxRetries(0),
		option.WithHTTPClient(&http.Client{Transport: tr}),
	)
}

func TestOpenAISDKStreamsAChat(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{Tokens: 6})
	client := newSDK(t, p.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:    "sim-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")},
	})
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	require.Equal(t, 6, chunks)
	require.Len(t, acc.Choices, 1)
	require.Equal(t, 6, len(strings.Fields(acc.Choices[0].Message.Content)))

	chat, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    "sim-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")},
	})
	require.NoError(t, err)
	require.EqualValues(t, 6, chat.Usage.CompletionTokens)
	p.WaitIdle(t, 2*time.Second)
}

func TestOpenAISDKReadsUnknownModelError(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{})
	client := newSDK(t, p.URL)
	_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:    "no-such-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")},
	})
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "got %T: %v", err, err)
	require.Equal(t, http.StatusNotFound, apiErr.StatusCode)
	require.Contains(t, apiErr.Message, "no-such-model")
	require.Equal(t, "not_found_error", apiErr.Type)
}

func TestOpenAISDKCompletionsAndModels(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{Models: []string{"m1", "m2"}, Tokens: 3})
	client := newSDK(t, p.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	page, err := client.Models.List(ctx)
	require.NoError(t, err)
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
	}
	require.ElementsMatch(t, []string{"m1", "m2"}, ids)

	c, err := client.Completions.New(ctx, openai.CompletionNewParams{
		Model:  "m2",
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Say")},
	})
	require.NoError(t, err)
	require.Len(t, c.Choices, 1)
	require.Equal(t, "tok tok tok", c.Choices[0].Text)
	require.EqualValues(t, 3, c.Usage.CompletionTokens)

	stream := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
		Model:  "m1",
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Say")},
	})
	var text strings.Builder
	for stream.Next() {
		if ch := stream.Current().Choices; len(ch) > 0 {
			text.WriteString(ch[0].Text)
		}
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	require.Equal(t, "tok tok tok", text.String())
	p.WaitIdle(t, 2*time.Second)
}

// client.Models.Get (GET /v1/models/{model}) answers a model that a routable replica serves, a name
// with a slash included, and 404 with OpenAI's error for one no replica serves.
func TestOpenAISDKRetrievesAModel(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{Models: []string{"m1", "org/m2"}})
	client := newSDK(t, p.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range []string{"m1", "org/m2"} {
		m, err := client.Models.Get(ctx, id)
		require.NoError(t, err, id)
		require.Equal(t, id, m.ID)
		require.EqualValues(t, "model", m.Object)
		require.NotZero(t, m.Created)
	}
	_, err := client.Models.Get(ctx, "m3")
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "got %T: %v", err, err)
	require.Equal(t, http.StatusNotFound, apiErr.StatusCode)
	require.Equal(t, "not_found_error", apiErr.Type)
	require.Contains(t, apiErr.Message, "m3")
}
