"""What a model route from the policy says about reaching it, found without calling anyone.

A route's model is a litellm model string, `<provider>/<model>`. Chat completions for a provider
whose API is OpenAI's own (`openai/…`, `hosted_vllm/…`, or any route with `passthrough: true`)
are relayed directly; every other goes through litellm. The Responses and Messages APIs are
relayed to an upstream that serves them itself (`serves_natively`) and translated by litellm
otherwise. Provider keys come from the server's environment (`api_key: env:NAME` in the policy),
never from the client. `route_problem` is what `memento-proxy policy check` reports, and what a
call on such a route answers (500 `upstream_misconfigured`).
"""

from __future__ import annotations

import functools
import os

from proxy.llm import import_litellm
from proxy.policy import ModelRoute, NativeApi
from proxy.upstreams.errors import misconfigured

# Providers whose API is OpenAI's own, and where they live when the route names no api_base.
OPENAI_COMPATIBLE = {"openai": "https://api.openai.com/v1", "hosted_vllm": None}


def provider_of(model: str) -> tuple[str, str]:
    """Split a litellm model string into (provider, model name); no prefix gives ("", model)."""
    provider, sep, name = model.partition("/")
    return (provider, name) if sep else ("", model)


def is_passthrough(route: ModelRoute) -> bool:
    """Whether calls for this route can skip litellm and be relayed byte for byte."""
    if route.passthrough is not None:
        return route.passthrough
    provider, _ = provider_of(route.model)
    if provider not in OPENAI_COMPATIBLE:
        return False
    return route.api_base is not None or OPENAI_COMPATIBLE[provider] is not None


def serves_natively(route: ModelRoute, api: NativeApi) -> bool:
    """Whether the route's upstream serves client API `api` itself (so calls are relayed to it
    as they come): the route's `native_apis`, else only OpenAI's own API serves `responses`."""
    if route.native_apis is not None:
        return api in route.native_apis
    provider, _ = provider_of(route.model)
    return api == "responses" and provider == "openai" and route.api_base is None


def route_problem(route: ModelRoute) -> str | None:
    """Why no call for this route can work, found without calling anyone; None if one can."""
    if route.model == "echo":
        return None
    provider, _ = provider_of(route.model)
    relayed = is_passthrough(route)
    # Relayed (chat, or the native_apis doors), or self-hosted (hosted_vllm): with no api_base
    # there is no address to call, and litellm would send a hosted_vllm call to OpenAI's.
    if (relayed or route.native_apis or provider in OPENAI_COMPATIBLE) and (
        route.api_base or OPENAI_COMPATIBLE.get(provider)
    ) is None:
        if relayed:
            how = "is relayed directly (passthrough)"
        elif route.native_apis:
            how = f"relays {', '.join(route.native_apis)} calls as they come (native_apis)"
        else:
            how = "is a self-hosted model"
        return (
            f"'{route.model}' {how} but has no api_base; write its server's URL, "
            "e.g. api_base: http://127.0.0.1:8000/v1"
        )
    if relayed:
        return None
    return _unknown_provider(route.model, route.api_base)


@functools.lru_cache(maxsize=1024)
def _unknown_provider(model: str, api_base: str | None) -> str | None:
    """litellm's own offline look-up of the provider, the first thing it does on every call."""
    try:
        import_litellm().get_llm_provider(model=model, api_base=api_base)
    except Exception:
        return (
            f"litellm knows no provider for '{model}'; write it as <provider>/<model>, e.g. "
            "openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest or ollama/llama3"
        )
    return None


def key_variable(route: ModelRoute) -> str | None:
    """The environment variable the route's `api_key: env:NAME` names, if any."""
    return None if route.api_key is None else route.api_key.removeprefix("env:")


def resolve_api_key(alias: str, route: ModelRoute) -> str | None:
    """The provider key named by `env:VAR` in the policy, read from the server environment."""
    name = key_variable(route)
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise misconfigured(
            alias, f"the environment variable {name}, named by its api_key, is not set"
        )
    return value
