// Streams one chat through the official openai npm package, as a Node.js application would, and
// prints what it received as one JSON line for node_client_test.go to check:
// {"content": <the deltas concatenated>, "chunks": <chunks received>, "completion_tokens": <usage>}.
// The proxy's base URL (ending in /v1), API key and model come from the environment.
import OpenAI from 'openai';

const client = new OpenAI({
  baseURL: process.env.LMPROXY_BASE_URL,
  apiKey: process.env.LMPROXY_API_KEY,
  maxRetries: 0, // a failure must show, not be hidden by a retry
  timeout: 20_000,
});

const stream = await client.chat.completions.create({
  model: process.env.LMPROXY_MODEL,
  messages: [{ role: 'user', content: 'Hello' }],
  stream: true,
  stream_options: { include_usage: true },
});

let content = '';
let chunks = 0;
let completionTokens = null;
for await (const chunk of stream) {
  chunks++;
  content += chunk.choices[0]?.delta?.content ?? '';
  if (chunk.usage) {
    completionTokens = chunk.usage.completion_tokens;
  }
}
console.log(JSON.stringify({ content, chunks, completion_tokens: completionTokens }));
