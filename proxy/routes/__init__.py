"""HTTP routes, assembled in proxy/app.py: chat, traces, admin, memories, feedback."""
