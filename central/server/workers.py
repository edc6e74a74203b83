"""``central serve --workers N``: N server processes on one port sharing one database and one blob folder.

uvicorn's supervisor binds the socket once and hands it to N worker processes,
each with its own app (:func:`worker_app`). Whatever must happen once happens
in the supervisor before any worker starts (:func:`prepare`): the schema, crash
recovery, the signing key and the admin token. Everything after that is
decided by the database (see :mod:`central.server.registry`), so it does not
matter which process answers a request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from central.server.app import ServerConfig, create_app
from central.server.auth import load_or_create_admin_token
from central.server.registry import Registry
from central.server.signing import ReleaseSigner

CONFIG_ENV = "CENTRAL_SERVE_CONFIG"
log = logging.getLogger("central.server")


def config_json(cfg: ServerConfig) -> str:
    d = dataclasses.asdict(cfg)
    d["data_dir"] = str(cfg.data_dir)
    d["kit_formats"] = list(cfg.kit_formats)
    return json.dumps(d)


def config_from_json(text: str) -> ServerConfig:
    d = json.loads(text)
    d["data_dir"] = Path(d["data_dir"])
    d["kit_formats"] = tuple(d["kit_formats"])
    return ServerConfig(**d)


def prepare(cfg: ServerConfig) -> dict:
    """Once, before the workers: create the schema, recover from a crash, create the keys; returns the recovery."""
    registry = Registry(cfg.data_dir, cfg.database_url)
    try:
        recovery = registry.recover()
    finally:
        registry.close()
    ReleaseSigner(cfg.data_dir)
    load_or_create_admin_token(cfg.data_dir)
    return recovery


def worker_app():
    """The app of one worker process (its config comes from the supervisor through the environment)."""
    return create_app(config_from_json(os.environ[CONFIG_ENV]), recover=False)


def serve(cfg: ServerConfig, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Serve ``cfg`` on ``host:port`` with ``workers`` processes (1: in this process)."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    if workers == 1:
        uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level, workers=1)
        return
    recovery = prepare(cfg)
    if recovery["removed_tmp"] or recovery["removed_orphan_blobs"]:
        log.warning("recovered from an unclean stop: %s", recovery)
    if recovery["missing_blobs"]:
        log.error("registry rows point to missing blobs: %s", recovery["missing_blobs"][:5])
    os.environ[CONFIG_ENV] = config_json(cfg)
    uvicorn.run("central.server.workers:worker_app", factory=True, host=host, port=port, log_level=log_level,
                workers=workers)
