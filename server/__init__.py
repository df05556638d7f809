"""The HTTP/WebSocket localisation service robots query (not yet implemented: see issue 5)."""
