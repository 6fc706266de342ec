"""The examples run and say what they promise."""

import functools
import http.server
import json
import pathlib
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo():
    out = run_example("demo.py")
    assert "apples counted inside the sandbox: 3" in out
    assert "plugin.restock -> {'pear': 10, 'plum': 10}" in out
    assert "hello from inside the sandbox" in out
    assert "ALLOWED" not in out
    assert out.count("refused") == 4


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


def test_game_scripting():
    out = run_example("game_scripting/app.py", "--ticks", "6", "--budget", "0.3")
    assert out.startswith("loaded 5 NPC scripts: cheater, dreamer, seeker, stubborn, wanderer")
    ticks = out.split("\n== tick ")
    assert len(ticks) == 7 and ticks[-1].startswith("5\n")
    board = ticks[1].splitlines()[-10:]  # nine rows of the board, then the scores
    assert board[0] == board[8] == "#" * 20 and all(len(row) == 20 for row in board[:9])
    assert "S=seeker" in board[9]
    # the cheater's attempts fail inside its own ticks, one per tick
    assert "cheater's tick failed: AttributeError: Unit has no exposed attribute 'teleport'" in ticks[1]
    assert "cheater's tick failed: AttributeError: Unit has no exposed attribute '_world'" in ticks[2]
    assert "cheater's tick failed: PermissionError" in ticks[3]
    # an endless Python loop is interrupted and loses one turn; the NPC plays on
    assert "dreamer ran past its 300 ms budget: interrupted, skips this turn" in ticks[3]
    assert out.count("dreamer ran past") == 1 and "D=dreamer" in ticks[-1]
    # a loop that cannot be interrupted: the NPC is removed, the game goes on
    assert "stubborn removed from the game: SandboxTimeout" in ticks[4]
    assert "T=stubborn" in ticks[3] and "T=stubborn" not in ticks[4]
    assert not any("T" in row for row in ticks[-1].splitlines() if row.startswith("#"))
    assert out.rstrip().splitlines()[-1].startswith("after 6 ticks: ")


def test_agent_tools():
    out = run_example("agent_tools/app.py")
    turns = out.split("\n== turn ")
    assert len(turns) == 13
    assert "['cities(name, population, area_km2)']" in turns[1]
    assert "Paris         19949 per km2" in turns[2] and "19949.24" in turns[3]
    # bad code comes back as data, and the loop goes on
    assert "output cut off at 1 KiB" in turns[4] and "lines not shown" in turns[4]
    assert "CallTimeout: the call ran past its timeout=1 seconds" in turns[5]
    assert "| 32512" in turns[6]  # os.system: exit status 127, no shell can start
    assert "SyntaxError: '(' was never closed" in turns[7] and "'title': 'Paris'" in turns[8]
    assert "AttributeError: Database has no exposed attribute 'add_city'; exposed: query, tables" in turns[9]
    assert "PermissionError: the database is read-only" in turns[10]
    assert "among the highest of any European capital" in turns[11]  # the async fetch tool
    assert "LookupError: no such page" in turns[12]
    assert "alive=False" not in out
    assert out.rstrip().splitlines()[-1].startswith("model answers: Paris")


def request_json(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
    request = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def tenant_server():
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "tenant_server" / "app.py"), "--port", "0",
                             "--deadline", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("tenant server on http://127.0.0.1:"), line + proc.stderr.read()
        yield line.split()[-1], proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=60)


def test_tenant_server(tenant_server):
    base, proc = tenant_server
    handlers = ROOT / "examples" / "tenant_server" / "handlers"
    for tenant in ("acme", "globex", "initech"):
        status, reply = request_json(base, "POST", f"/tenants/{tenant}/handler", (handlers / f"{tenant}.py").read_bytes())
        assert status == 201 and reply["tenant"] == tenant
    assert request_json(base, "GET", "/t/acme/orders") == (200, {"tenant": "acme", "hits": 1, "path": "/orders",
                                                          "last_body": None})
    status, reply = request_json(base, "POST", "/t/acme/orders", b"hello")
    assert status == 200 and reply["hits"] == 2 and reply["last_body"] == "hello"
    # globex sees its own keys only, and not the store's namespace
    assert request_json(base, "GET", "/t/globex/") == (200, {"my_keys": ["visits"], "hits": None,
                                                     "namespace": "(not exposed)"})
    # a handler that never returns is stopped with a 504 while the others are served meanwhile
    looping = {}
    thread = threading.Thread(target=lambda: looping.update(answer=request_json(base, "GET", "/t/initech/")))
    thread.start()
    assert request_json(base, "GET", "/t/acme/")[1]["hits"] == 3
    thread.join(60)
    status, reply = looping["answer"]
    assert status == 504 and "was stopped" in reply["error"]
    # a handler that raises: 500 with the exception
    assert request_json(base, "POST", "/tenants/hooli/handler", b"def handle(request):\n    return 1 / 0\n")[0] == 201
    assert request_json(base, "GET", "/t/hooli/") == (500, {"error": "ZeroDivisionError: division by zero"})
    # suspended: the store is revoked, requests are refused
    assert request_json(base, "POST", "/tenants/acme/suspend") == (200, {"tenant": "acme", "suspended": True})
    assert request_json(base, "GET", "/t/acme/")[0] == 403
    assert request_json(base, "GET", "/t/globex/")[1]["my_keys"] == ["visits"]
    assert request_json(base, "GET", "/t/nobody/")[0] == 404
    assert request_json(base, "GET", "/elsewhere")[0] == 404
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert "GET /t/initech/ -> 504" in out and out.rstrip().endswith("shutting down"), err
