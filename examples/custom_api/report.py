"""The untrusted part: a report script written by someone else.

It runs in the sandbox with two grants and nothing else: ``fs`` (open() sees /data
read-only and /out writable) and ``web`` (HTTP to the allowed hosts). ``urls`` is
plain data: the pages to look at.
"""

import re
import socket

keywords = open("/data/keywords.txt").read().split()
lines = []
for url in urls:
    try:
        page = web.get(url)
    except PermissionError as exc:
        print(f"refused: {exc}")
        continue
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    found = [k for k in keywords if k.lower() in page.lower()]
    lines.append(f"{url}: {title.group(1).strip() if title else '(no title)'}; mentions {', '.join(found) or 'nothing'}")
    print(f"fetched {url} ({len(page)} characters)")

for attempt, action in [("a socket of its own", lambda: socket.create_connection(("127.0.0.1", 80), timeout=1)),
                        ("the host's /etc/passwd", lambda: open("/etc/passwd")),
                        ("writing to /data", lambda: open("/data/keywords.txt", "w"))]:
    try:
        action()
        print(f"{attempt}: ALLOWED (this should not happen)")
    except OSError as exc:
        print(f"{attempt}: {type(exc).__name__}")

with open("/out/report.txt", "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote /out/report.txt ({len(lines)} pages)")
