"""The central's registry and HTTP server (FastAPI; SQLite or PostgreSQL; content-addressed blobs).

Server-only dependencies (fastapi, uvicorn, sqlalchemy, psycopg) stay in this package;
the device side (``edge_agent.client``) never imports it.
"""
