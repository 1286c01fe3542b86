"""Memento Proxy: an OpenAI-compatible proxy that gives LLM applications memory."""

__version__ = "0.1.0"
