"""A custom API with no raw OS access: a virtual file system and allow-listed HTTP.

Run:  python examples/custom_api/app.py [URL ...]

Without URLs it serves site/ on 127.0.0.1 (a demo server in a thread) and uses that
page. The untrusted report.py runs in a sandbox that has no files, sockets or
processes of its own; it gets ``fs`` (data/ read-only at /data, a fresh directory
writable at /out) and ``web`` (HTTP GET to the hosts of the given URLs only).
"""

from __future__ import annotations

import functools
import http.server
import pathlib
import sys
import tempfile
import threading

from web import Web, host_and_port  # the capability, next to this file

from capbridge import Limits, Sandbox
from host_apis import Mount, VirtualFS

HERE = pathlib.Path(__file__).resolve().parent

NOT_ALLOWED = "http://example.com/"  # the script tries it too; no request is made


def serve_demo_site() -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(HERE / "site")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    server = None
    if not argv:
        server = serve_demo_site()
        argv = [f"http://127.0.0.1:{server.server_address[1]}/index.html"]
    allowed = {host_and_port(url) for url in argv}
    print(f"host: the allow-list is {', '.join(sorted(allowed))}")
    with tempfile.TemporaryDirectory(prefix="custom_api-") as out:
        fs = VirtualFS({"/data": Mount(str(HERE / "data")), "/out": Mount(out, writable=True)})
        try:
            with Sandbox({"fs": fs, "web": Web(allowed), "urls": [*argv, NOT_ALLOWED]},
                         limits=Limits(memory_mb=256, wall_seconds=30)) as sb:
                sb.exec((HERE / "report.py").read_text(), filename=str(HERE / "report.py"))
        finally:
            fs.close()
            if server is not None:
                server.shutdown()
        print("host: the report says\n" + pathlib.Path(out, "report.txt").read_text().rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
