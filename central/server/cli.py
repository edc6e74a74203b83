"""``central`` verbs for the server: serve, publish, devices add/list/revoke, queue.

Wire with ``central.server.cli.register(app)`` on the ``central`` typer app.
The queue is consolidated by ``central consolidate --from-queue``
(:func:`central.server.admin.consolidate_from_queue`).
Admin commands talk to the running server: ``--server`` (``$CENTRAL_SERVER``,
default http://127.0.0.1:8080) and ``--admin-token`` (``$CENTRAL_ADMIN_TOKEN``,
else ``<data-dir>/admin-token``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.cli_support import EXIT_USAGE, fail, friendly
from edge_agent.ood_sources import ood_help, ood_source_error
from export import ONNX_INT8_TYPES

SERVER_OPT = typer.Option(None, "--server", envvar="CENTRAL_SERVER", help="central URL (default: http://127.0.0.1:8080)")
TOKEN_OPT = typer.Option(None, "--admin-token", envvar="CENTRAL_ADMIN_TOKEN", help="admin token")
DATA_OPT = typer.Option(None, "--data-dir", help="read the admin token from <data-dir>/admin-token")


def admin_client(server: str | None, admin_token: str | None, data_dir: Path | None):
    # httpx is imported by the commands that talk to the server, not by `central --help`.
    from central.server.admin import admin_client

    return admin_client(server, admin_token, data_dir)


def register(app: typer.Typer) -> None:
    """Add serve, publish, devices and queue to the ``central`` typer app."""

    @app.command()
    @friendly
    def serve(
        data_dir: Annotated[Path, typer.Option("--data-dir", help="registry folder (SQLite, blobs, keys)")],
        host: str = typer.Option("127.0.0.1", help="bind address (0.0.0.0 for all interfaces)"),
        port: int = typer.Option(8080),
        max_upload_mb: float = typer.Option(64.0, help="largest accepted upload, in MB (larger: 413)"),
        max_concurrent_uploads: int = typer.Option(4, help="uploads received at once (more: 503 with Retry-After)"),
        statement_ttl_days: float = typer.Option(
            30.0, help="days a signed release statement stays valid (each is signed afresh when served)"
        ),
        kit_formats: str = typer.Option("onnx-int8,tflite-int8", help="kits built for each published version"),
        kit_builder: str = typer.Option(None, help="module:function building a kit folder (default: export.kit)"),
        calib_ood: str = typer.Option(
            None, help=ood_help("int8 calibration source for kits")
        ),
        onnx_int8: str = typer.Option("u8u8", help="ONNX int8 kits' activation and weight types: u8u8 (no "
                                      "saturation without VNNI), u8s8 or s8s8 (faster where every x86 device has "
                                      "VNNI; docs/export.md)"),
        workers: int = typer.Option(1, help="server processes sharing the port, the database and the blobs"),
        database_url: str = typer.Option(
            None, envvar="CENTRAL_DATABASE_URL",
            help="registry database: postgresql://user@host/db, or sqlite:///path (default: <data-dir>/registry.sqlite)",
        ),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run the central's HTTP server (OpenAPI docs at /docs).

        Example: [bold]central serve --data-dir registry/ --port 8080 --workers 4 --database-url postgresql://central@db/central[/]
        """
        from central.server.app import ServerConfig
        from central.server.database import open_database
        from central.server.workers import serve as run_server

        if (why := ood_source_error(calib_ood)) is not None:
            fail(EXIT_USAGE, f"--calib-ood: {why}")
        if onnx_int8 not in ONNX_INT8_TYPES:
            fail(EXIT_USAGE, f"--onnx-int8 must be one of {', '.join(ONNX_INT8_TYPES)}, not {onnx_int8!r}")
        if workers < 1:
            fail(EXIT_USAGE, f"--workers must be at least 1, not {workers}")
        db = open_database(database_url, data_dir)  # a URL naming no supported database: exit 2
        db.dispose()
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        cfg = ServerConfig(
            data_dir=data_dir,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_concurrent_uploads=max_concurrent_uploads,
            statement_ttl_days=statement_ttl_days,
            kit_formats=tuple(f.strip() for f in kit_formats.split(",") if f.strip()),
            kit_builder=kit_builder,
            calib_ood=calib_ood,
            onnx_int8=onnx_int8,
            database_url=database_url,
        )
        typer.echo(f"central serving {data_dir} ({db.kind} {db.url}, {workers} process(es)) on "
                   f"http://{host}:{port} (admin token in {data_dir / 'admin-token'})")
        # A ValueError (bad data dir, kit formats): exit 2; an unreachable database: exit 75.
        run_server(cfg, host, port, workers, log_level)

    @app.command()
    @friendly
    def publish(
        bundle: Annotated[Path, typer.Argument(help="bundle to make the current central version")],
        server: str = SERVER_OPT, admin_token: str = TOKEN_OPT, data_dir: Path = DATA_OPT,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Make a bundle the current central version (signed; its kits are built in the background).

        Example: [bold]central publish central-1.safetensors --server http://127.0.0.1:8080 --data-dir registry/[/]
        """
        if not bundle.is_file():
            raise FileNotFoundError(f"no bundle at {bundle}")
        with admin_client(server, admin_token, data_dir) as c:
            from central.server.admin import publish_file

            v = publish_file(c, bundle)
        if as_json:
            typer.echo(json.dumps(v, indent=2))
        else:
            typer.echo(f"published v{v['version']} ({v['bundle_id'][:12]}…); kits are being built")

    devices = typer.Typer(
        help="enrol, list and revoke devices\n\nExample: [bold]central devices add kitchen-pi --data-dir registry/[/]",
        no_args_is_help=True,
    )
    app.add_typer(devices, name="devices")

    @devices.command("add")
    @friendly
    def devices_add(
        name: Annotated[str, typer.Argument(help="device name, e.g. kitchen-pi")],
        server: str = SERVER_OPT, admin_token: str = TOKEN_OPT, data_dir: Path = DATA_OPT,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Register a device; prints its one-time enrolment token.

        Example: [bold]central devices add kitchen-pi --data-dir registry/[/]
        """
        with admin_client(server, admin_token, data_dir) as c:
            body = c.post_json("/v1/admin/devices", {"name": name})
        if as_json:
            typer.echo(json.dumps(body))
        else:
            typer.echo(f"device {body['device']} added; one-time enrolment token (shown once):\n{body['token']}")

    @devices.command("list")
    @friendly
    def devices_list(
        server: str = SERVER_OPT, admin_token: str = TOKEN_OPT, data_dir: Path = DATA_OPT,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """List devices.

        Example: [bold]central devices list --json --data-dir registry/[/]
        """
        with admin_client(server, admin_token, data_dir) as c:
            rows = c.get_json("/v1/admin/devices")
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        for d in rows:
            state = "revoked" if d["revoked"] else ("enrolled" if d["enrolled"] else "waiting for enrolment")
            typer.echo(f"{d['device']:<24} {state}")

    @devices.command("revoke")
    @friendly
    def devices_revoke(
        name: Annotated[str, typer.Argument(help="device name")],
        server: str = SERVER_OPT, admin_token: str = TOKEN_OPT, data_dir: Path = DATA_OPT,
    ) -> None:
        """Revoke a device: its token stops working at once.

        Example: [bold]central devices revoke kitchen-pi --data-dir registry/[/]
        """
        with admin_client(server, admin_token, data_dir) as c:
            c.post_json(f"/v1/admin/devices/{name}/revoke")
        typer.echo(f"device {name} revoked")

    @app.command()
    @friendly
    def queue(
        server: str = SERVER_OPT, admin_token: str = TOKEN_OPT, data_dir: Path = DATA_OPT,
        show_all: bool = typer.Option(False, "--all", help="include consolidated uploads"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Uploaded device models waiting for consolidation, in arrival order.

        Example: [bold]central queue --all --data-dir registry/[/]
        """
        with admin_client(server, admin_token, data_dir) as c:
            rows = c.get_json("/v1/admin/queue", params={"status": "all" if show_all else "queued"})
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo("the queue is empty")
        for u in rows:
            typer.echo(f"#{u['id']:<5} {u['device']:<20} {u['bundle_id'][:12]}  from v{u['base_version']}  "
                       f"{u['size']} bytes  {u['received_at']}  {u['status']}")
