"""The examples run and say what they promise."""

import functools
import http.server
import pathlib
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo():
    out = run_example("demo.py")
    assert "apples counted inside the sandbox: 3" in out
    assert "plugin.restock -> {'pear': 10, 'plum': 10}" in out
    assert "hello from inside the sandbox" in out
    assert "ALLOWED" not in out
    assert out.count("refused") == 4


def test_tenant_scripts():
    out = run_example("tenant_scripts.py")
    for tenant in ("acme", "globex"):
        assert f"{tenant} after revoke: RevokedError" in out
        assert f"{tenant} on the host: runs=2, last_total=4.0" in out
    assert out.count("2 orders, total 4.00") == 4


def test_plugin_host():
    out = run_example("plugin_host/app.py")
    assert out.startswith("loaded 6 plugins: crasher, hanger, memory_hog, signature, spell_check, word_count")
    # the three bad plugins are stopped on the first edit, each for its own reason
    assert "! crasher stopped: the sandbox process died (killed by signal SIGSEGV)" in out
    assert "! hanger stopped: a call into the sandbox ran longer than Limits.wall_seconds=1" in out
    assert "! memory_hog stopped: the sandbox ran out of memory (Limits.memory_mb=128)" in out
    # the others keep working, before and after
    assert out.count("[word_count]") == 2 and "[spell_check] no typos" in out
    assert "[signature] signed the document" in out
    assert "cannot see the file path: Document has no exposed attribute 'path'" in out
    # revoked at run time: its next use fails, the plugin itself lives on
    after = out.split("turn off spell_check's access", 1)[1]
    assert "! spell_check failed: RevokedError" in after and "[spell_check]" not in after
    assert "still running: signature, spell_check (no document access), word_count" in out
    assert "-- sent from a sandbox" in out and "secret-plans" not in out


@pytest.fixture
def site(tmp_path):
    """A page served on 127.0.0.1 (and a directory, which the server redirects to its slash form)."""
    (tmp_path / "page.html").write_text("<html><head><title>Kernel news</title></head>"
                                        "<body>the kernel confines the sandbox</body></html>")
    (tmp_path / "moved").mkdir()
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_custom_api(site):
    url = f"{site}/page.html"
    out = run_example("custom_api/app.py", url)
    assert f"fetched {url}" in out
    assert "refused: example.com:80 is not on the allow-list" in out
    assert "a socket of its own: PermissionError" in out
    assert "the host's /etc/passwd: FileNotFoundError" in out
    assert "writing to /data: PermissionError" in out
    assert "ALLOWED" not in out
    assert out.rstrip().endswith(f"{url}: Kernel news; mentions sandbox, kernel")


def test_custom_api_web_refuses_what_the_list_does_not_name(site):
    """The capability itself: other hosts, schemes and redirects are refused."""
    sys.path.insert(0, str(ROOT / "examples" / "custom_api"))
    try:
        from web import Web, host_and_port
    finally:
        sys.path.pop(0)
    web = Web({host_and_port(site)}, max_bytes=50)
    with pytest.raises(ValueError, match="more than 50 bytes"):
        web.get(f"{site}/page.html")
    with pytest.raises(PermissionError, match="redirects are not followed"):
        web.get(f"{site}/moved")
    with pytest.raises(OSError, match="HTTP 404"):
        web.get(f"{site}/missing.html")
    port = site.rsplit(":", 1)[1]
    for url in ("http://127.0.0.2:1/", f"http://localhost:{port}/page.html", "file:///etc/passwd",
                f"ftp://127.0.0.1:{port}/", f"http://127.0.0.1:{port}@evil.example/"):
        with pytest.raises(PermissionError):
            web.get(url)
def test_agent_loop():
    out = run_example("agent_loop.py")
    assert "loaded 4 scores" in out and "\n79\n" in out
    assert "RemoteError: TypeError" in out and "\n29\n" in out  # the state survived the error
    assert "CallTimeout:" in out and "lives on" in out
    assert "output cut off at 1 KiB" in out and "line 399" not in out
    assert "SyntaxError" in out
    assert out.rstrip().endswith("4")
    assert "alive=False" not in out


def test_npc_ticks():
    out = run_example("npc_ticks.py")
    assert "looper was removed on tick 30: SandboxTimeout" in out
    assert "looper: moved 90" in out and "removed" in out
    assert "walker: moved" in out and "thinker: moved" in out
    thinker = next(line for line in out.splitlines() if line.startswith("thinker:"))
    assert thinker.endswith("alive") and int(thinker.split("skipped ")[1].split(",")[0]) >= 3
