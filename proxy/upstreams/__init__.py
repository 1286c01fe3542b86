"""Calling the real model: one transport per way of reaching it, behind one small protocol.

- `base`: `Target`, `UpstreamReply`, `UpstreamStream` and the `Upstream` protocol they share.
- `relay`: OpenAI-compatible upstreams (`openai/…`, `hosted_vllm/…`, `passthrough: true`),
  forwarded over one shared aiohttp pool with their response bytes unchanged.
- `translated`: every other provider (Azure, Anthropic, Ollama's native API, Bedrock…) through
  litellm, its answers and errors made to read like the relay's.
- `echo`: the built-in `echo` model, answering locally.
- `routing`: what a policy route says (provider, direct or translated, key, problems).
- `errors`: upstream failures as OpenAI-shaped errors for the client.
- `registry`: `Upstreams`, choosing the transport for each route.

Provider keys come from the server's environment, never from the client; a route that cannot work
as configured answers 500 `upstream_misconfigured`, a message for the operator.
"""
