"""The central's registry and HTTP server (FastAPI + SQLite + content-addressed blobs).

Server-only dependencies (fastapi, uvicorn, sqlalchemy) stay in this package;
the device side (``edge_agent.client``) never imports it.
"""
