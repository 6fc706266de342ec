"""An HTTP service that runs code its tenants upload, each request in a fresh sandbox.

Run:  python examples/tenant_server/app.py [--port 8080] [--deadline 0.5] [--data DIR]

  POST /tenants/<name>/handler    upload the tenant's handler (the body is Python source
                                  defining ``handle(request)``)
  POST /tenants/<name>/suspend    cut the tenant off: its store is revoked
  GET|POST /t/<name>/<path>       run the tenant's handler on this request

Each request takes a fresh sandbox from a ``SandboxPool`` (the async form, so the
event loop never blocks), grants it ``request`` (a dict) and ``store``, the tenant's
own ``host_apis.KeyValueStore``, and answers with what ``handle(request)`` returned,
as JSON. A handler that runs past its deadline gets 504; one that raises, 500.
Standard library only: asyncio streams and a minimal HTTP/1.1 parser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import re
import signal
import sys
import tempfile
import time
import urllib.parse
from typing import Any

from capbridge import Limits, RemoteError, SandboxError, SandboxPool, SandboxTimeout, revocable
from host_apis import KeyValueStore

LIMITS = Limits(memory_mb=128, cpu_seconds=5, max_output_kb=16)  # per request's sandbox
DEADLINE = 0.5  # default seconds for loading a handler and running it, per request (--deadline)
MAX_BODY = 64 * 1024
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
           502: "Bad Gateway", 504: "Gateway Timeout"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Tenant:
    """A tenant's uploaded handler and its store (revocable, so it can be cut off)."""

    def __init__(self, name: str, data: pathlib.Path) -> None:
        self.name = name
        self.source: str | None = None
        self.kv = KeyValueStore(data / "tenants.sqlite", namespace=name, max_keys=1000, max_bytes=1 << 20)
        self.store, self._revoke = revocable(self.kv)
        self.suspended = False

    def suspend(self) -> None:
        self._revoke()  # every store reference its running handlers hold now fails
        self.suspended = True


class TenantServer:
    def __init__(self, pool: SandboxPool, data: pathlib.Path, deadline: float = DEADLINE) -> None:
        self.pool = pool
        self.data = data
        self.deadline = deadline
        self.tenants: dict[str, Tenant] = {}

    def tenant(self, name: str) -> Tenant:
        if not NAME.fullmatch(name):
            raise BadRequest(400, "tenant names are 1-32 of a-z, 0-9, _ and -, starting with a letter or digit")
        if name not in self.tenants:
            self.tenants[name] = Tenant(name, self.data)
        return self.tenants[name]

    async def route(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        url = urllib.parse.urlsplit(target)
        parts = url.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "tenants" and parts[2] in ("handler", "suspend"):
            if method != "POST":
                raise BadRequest(405, f"use POST for /tenants/<name>/{parts[2]}")
            tenant = self.tenant(parts[1])
            if parts[2] == "suspend":
                tenant.suspend()
                return 200, {"tenant": tenant.name, "suspended": True}
            tenant.source = body.decode("utf-8", "replace")
            return 201, {"tenant": tenant.name, "handler_bytes": len(body)}
        if len(parts) >= 2 and parts[0] == "t" and method in ("GET", "POST"):
            tenant = self.tenants.get(parts[1])
            if tenant is None or tenant.source is None:
                raise BadRequest(404, f"no handler uploaded for tenant {parts[1]!r}")
            if tenant.suspended:
                raise BadRequest(403, f"tenant {tenant.name!r} is suspended")
            request = {"method": method, "path": "/" + "/".join(parts[2:]),
                       "query": dict(urllib.parse.parse_qsl(url.query)),
                       "body": body.decode("utf-8", "replace")}
            return await self.run_handler(tenant, request)
        raise BadRequest(404, f"no route for {method} {url.path}")

    async def run_handler(self, tenant: Tenant, request: dict) -> tuple[int, Any]:
        """Run the tenant's ``handle(request)`` in a fresh sandbox with the tenant's store."""
        try:
            async with self.pool.async_sandbox(grants={"store": tenant.store, "request": request}) as sb:
                with sb.deadline(self.deadline):  # one deadline for loading and running the handler
                    await sb.exec(tenant.source, filename=f"<{tenant.name} handler>")
                    result = await sb.eval("handle(request)")
        except SandboxTimeout:  # interrupted (CallTimeout), or killed because it would not stop
            return 504, {"error": f"the handler ran longer than {self.deadline} s and was stopped"}
        except RemoteError as exc:  # the handler raised
            return 500, {"error": f"{exc.type_name}: {exc.message}"}
        except SandboxError as exc:  # crashed, out of memory or CPU
            return 502, {"error": f"the handler's sandbox failed: {exc}"}
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            return 500, {"error": f"the handler returned {type(result).__name__}, which is not JSON"}
        return 200, result

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = time.monotonic()
        method, target = "-", "-"
        try:
            try:
                method, target, body = await asyncio.wait_for(read_request(reader), timeout=10)
                status, payload = await self.route(method, target, body)
            except BadRequest as exc:
                status, payload = exc.status, {"error": str(exc)}
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except Exception as exc:  # the server's own failure: answer, log, keep serving
                print(f"internal error on {method} {target}: {type(exc).__name__}: {exc}", file=sys.stderr)
                status, payload = 500, {"error": "internal server error"}
            data = json.dumps(payload).encode() + b"\n"
            writer.write(f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                         "Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
            print(f"{method} {target} -> {status} ({(time.monotonic() - start) * 1000:.0f} ms)", flush=True)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for tenant in self.tenants.values():
            tenant.kv.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """One HTTP/1.1 request: ``(method, target, body)``; only Content-Length bodies."""
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(line, None)
    fields = line.decode("latin-1").split()
    if len(fields) != 3 or not fields[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, _ = fields
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        if len(headers) >= 100:
            raise BadRequest(400, "too many headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest(400, "chunked bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise BadRequest(413, f"bodies are limited to {MAX_BODY} bytes")
    return method, target, await reader.readexactly(length)


async def serve(server: TenantServer, port: int) -> None:
    listener = await asyncio.start_server(server.serve_connection, "127.0.0.1", port)
    print(f"tenant server on http://127.0.0.1:{listener.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with listener:
        await stop.wait()
    print("shutting down", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--deadline", type=float, default=DEADLINE,
                        help=f"seconds a request's handler may take (default {DEADLINE})")
    parser.add_argument("--data", help="directory for the tenants' store (default: a temporary one, removed at exit)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as cleanup:
        data = args.data or cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tenant-server-"))
        pool = cleanup.enter_context(SandboxPool(4, limits=LIMITS))
        server = TenantServer(pool, pathlib.Path(data), args.deadline)
        cleanup.callback(server.close)
        asyncio.run(serve(server, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
