"""HTTP routes beyond the chat surface in proxy/app.py (traces, admin, memories, feedback)."""
