"""Shared fixtures: small real data and bundles, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("EDGE_PROGRESS", "0")

BIN = Path(sys.executable).parent


def cli(name: str) -> str:
    """Path of a console script installed next to this interpreter."""
    return str(BIN / name)


@pytest.fixture(scope="session")
def split_digits(tmp_path_factory) -> Path:
    from edge_agent.data.digits import write_split_digits

    root = tmp_path_factory.mktemp("split-digits")
    write_split_digits(root)
    return root


@pytest.fixture(scope="session")
def central0(tmp_path_factory, split_digits) -> Path:
    from central.init import init_central

    path = tmp_path_factory.mktemp("central") / "central-0.safetensors"
    init_central("cnn-s", [str(i) for i in range(10)], path, (1, 16, 16), seed=0, width=8)
    return path


# -- the registry's two databases --------------------------------------------------------------------
# Server and registry tests run once per database: `sqlite` always, `postgres` on a throwaway cluster
# when PostgreSQL is installed. CENTRAL_REQUIRE_POSTGRES=1 (CI) turns its absence into a failure.
DATABASES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_cluster():
    from pg_support import PostgresCluster, why_unavailable

    reason = why_unavailable()
    if reason:
        if os.environ.get("CENTRAL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CENTRAL_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(f"PostgreSQL backend not tested: {reason}")
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=DATABASES)
def database_url(request) -> str | None:
    """None (the embedded SQLite file in the data dir) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_cluster").new_database()
