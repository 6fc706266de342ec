"""The tools the agent's code may call: plain host objects, granted as capabilities.

Nothing here knows about sandboxes except ``@expose`` on the fetch tool's method;
``search`` and ``calculator`` are plain functions, and the database is granted as a
facet of two of its methods.
"""

from __future__ import annotations

import ast
import asyncio
import operator
import sqlite3
import threading

from capbridge import expose

DOCUMENTS = [
    {"title": "Lyon", "url": "https://wiki.example/lyon",
     "text": "Lyon lies where the Rhone meets the Saone; its old town is a world heritage site."},
    {"title": "Paris", "url": "https://wiki.example/paris",
     "text": "Paris is the most densely populated city of France, on the Seine."},
    {"title": "Marseille", "url": "https://wiki.example/marseille",
     "text": "Marseille is the oldest city of France, a port on the Mediterranean."},
    {"title": "Population density", "url": "https://wiki.example/density",
     "text": "Population density is the number of people per square kilometre."},
]

PAGES = {
    "https://wiki.example/paris": "Paris. Its density (about 20,000 people per km2) is among the highest "
                                  "of any European capital; the city proper covers only 105 km2.",
    "https://wiki.example/lyon": "Lyon. Third-largest city of France, known for its cuisine.",
}

CITIES = [("Paris", 2_102_650, 105.4), ("Marseille", 873_076, 240.6),
          ("Lyon", 522_250, 47.9), ("Toulouse", 504_078, 118.3), ("Nice", 348_085, 71.9)]


def search(query: str, limit: int = 3) -> list[dict]:
    """Search the document index; each hit is a dict with title, url and snippet."""
    words = query.lower().split()
    scored = [(sum(doc["text"].lower().count(w) + 3 * doc["title"].lower().count(w) for w in words), doc)
              for doc in DOCUMENTS]
    hits = sorted((pair for pair in scored if pair[0]), key=lambda pair: -pair[0])[:limit]
    return [{"title": doc["title"], "url": doc["url"], "snippet": doc["text"][:60]} for _, doc in hits]


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg}


def calculator(expression: str) -> float:
    """Evaluate arithmetic: numbers, parentheses and + - * / ** only."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")

    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")
    return value(ast.parse(expression, mode="eval").body)


class Database:
    """A small SQLite database in memory. The agent gets ``facet(db, "tables", "query")``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE TABLE cities (name TEXT, population INTEGER, area_km2 REAL)")
        self._db.executemany("INSERT INTO cities VALUES (?, ?, ?)", CITIES)
        self._db.execute("PRAGMA query_only = ON")  # this connection refuses writes from here on

    def tables(self) -> list[str]:
        """Each table with its columns, as 'name(column, ...)'."""
        with self._lock:
            names = [row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return [f"{name}({', '.join(col[1] for col in self._db.execute(f'PRAGMA table_info({name})'))})"
                    for name in names]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one SELECT statement; returns at most 100 rows."""
        if not sql.lstrip().upper().startswith("SELECT"):
            raise PermissionError("the database is read-only: SELECT statements only")
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchmany(100)
            except sqlite3.Error as exc:  # a host-side type: send the message as a plain ValueError
                raise ValueError(f"SQL error: {exc}") from None

    def add_city(self, name: str, population: int, area_km2: float) -> None:
        """Add a city (the host's own method: not in the agent's facet)."""
        with self._lock:
            self._db.execute("PRAGMA query_only = OFF")
            try:
                self._db.execute("INSERT INTO cities VALUES (?, ?, ?)", (name, population, area_km2))
            finally:
                self._db.execute("PRAGMA query_only = ON")


class Web:
    """Fetches pages: an ``async def`` method, awaited on the host's event loop."""

    def __init__(self, pages: dict[str, str]) -> None:
        self._pages = pages

    @expose
    async def fetch(self, url: str) -> str:
        """The text of the page at ``url`` (from the host's cache of known pages)."""
        await asyncio.sleep(0.01)  # where a real tool would await an HTTP client
        if url not in self._pages:
            raise LookupError(f"no such page: {url}")
        return self._pages[url]
