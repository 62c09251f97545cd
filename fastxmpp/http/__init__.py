"""HTTP endpoints inside the server process (aiohttp on the server's loop): RFC 7395
WebSocket and XEP-0156 discovery (server.py, websocket.py)."""
