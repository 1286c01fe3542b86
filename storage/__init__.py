"""Persistence for Memento Proxy: SQLite (source of truth) and LanceDB (derived hybrid index)."""
