"""The client APIs the proxy serves, one small adapter ("door") each.

A door says how its API's request carries the conversation and takes the memory block, how its
answers (whole or streamed) read as a chat.completion for the write path, and which event ends
its streams. The memory stages and the call flow (`proxy.routes.chat`) see only the `Door`
protocol of `base.py`; per-API differences live in the door's module.
"""
