"""An HTTP capability that reaches only the hosts on its allow-list."""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Iterable

from capbridge import expose

DEFAULT_PORTS = {"http": 80, "https": 443}


def host_and_port(url: str) -> str:
    """``host:port`` of ``url``, as the allow-list names it."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port or DEFAULT_PORTS.get(parts.scheme, 0)}"


class Web:
    """HTTP GET for untrusted code, limited to an allow-list of ``host:port`` entries.

    Redirects are not followed (one could lead off the list) and bodies are capped.
    The sandbox itself has no network at all: this object, on the host, is its only
    way out.
    """

    def __init__(self, allowed: Iterable[str], *, max_bytes: int = 1_000_000, timeout: float = 5.0) -> None:
        self.allowed = frozenset(allowed)
        self.max_bytes = max_bytes
        self.timeout = timeout

    @expose
    def get(self, url: str) -> str:
        """Fetch ``url`` and return its body as text.

        Raises PermissionError for a host not on the allow-list, a scheme other than
        http/https, or a redirect; ValueError for a body over the size limit; OSError
        for an HTTP error status or a failed connection.
        """
        parts = urllib.parse.urlsplit(str(url))
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise PermissionError(f"only http:// and https:// URLs can be fetched, not {url!r}")
        where = host_and_port(url)
        if where not in self.allowed:
            raise PermissionError(f"{where} is not on the allow-list ({', '.join(sorted(self.allowed))})")
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = connection_class(parts.hostname, parts.port, timeout=self.timeout)
        try:
            conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
            response = conn.getresponse()
            if 300 <= response.status < 400:
                raise PermissionError(f"{url} redirects to {response.getheader('Location')!r}; redirects are not followed")
            if response.status >= 400:
                raise OSError(f"HTTP {response.status} {response.reason} from {url}")
            body = response.read(self.max_bytes + 1)
        finally:
            conn.close()
        if len(body) > self.max_bytes:
            raise ValueError(f"{url} sent more than {self.max_bytes} bytes")
        return body.decode(response.headers.get_content_charset() or "utf-8", "replace")
