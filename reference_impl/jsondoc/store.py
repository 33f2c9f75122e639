"""Document stores behind the JSONDOC protocol: one interface, two backends.

``Store`` is what ``protocol.dispatch`` needs: ``insert``, ``find``, ``count``,
``delete`` on named collections of JSON objects, insertion order kept, one string
``_id`` per document, unique in its collection.

* ``MemoryStore``: dicts under a lock; gone when the process ends (the default
  when the server gets no ``--data``).
* ``SqliteStore(path)``: the standard library's sqlite3, WAL journal and
  ``synchronous=FULL``, each write committed before the method returns, so a write
  the server acknowledges survives ``kill -9`` (JSON-6).

The seed implementations kept documents in MongoDB.  That backend is deliberately
absent: a MongoDB server cannot be installed here, and the reference must run with
the standard library alone.  Another backend only has to implement ``Store``.

Filters are matched in Python (``matches``), with the contract's JSON equality:
numbers by numeric value (``1 == 1.0``) but booleans are not numbers
(``true != 1``); strings, null, arrays (element by element) and objects (same key
set, equal values) structurally.  Only a string ``_id`` member of a filter is
pushed down to the backend, as a lookup by id.

Documents handed to a store become the store's: callers never mutate them after
``insert``, and the documents ``find`` returns must be treated as read-only.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # sqlite3 is imported only when a SqliteStore is built (start-up time)
    import sqlite3

Doc = dict[str, Any]


class DuplicateIdError(Exception):
    """insert() of a document whose string ``_id`` is already in the collection."""

    def __init__(self, coll: str, doc_id: str) -> None:
        super().__init__(f"a document with _id {doc_id!r} already exists in {coll!r}")
        self.coll = coll
        self.doc_id = doc_id


class StoreError(Exception):
    """The backend failed (I/O error, disk full, ...): nothing was acknowledged."""


class Store(Protocol):
    """The operations the protocol needs; every method is safe to call from many threads."""

    def insert(self, coll: str, doc: Doc) -> str:
        """Store ``doc`` in ``coll``; returns its ``_id``.

        A string ``doc["_id"]`` is kept (``DuplicateIdError`` if taken: nothing is
        stored); otherwise a fresh id, unequal to every ``_id`` in ``coll``, is
        assigned and replaces any non-string ``_id``.  Durable when it returns.
        """
        ...

    def find(self, coll: str, filter: Mapping[str, Any]) -> list[Doc]:
        """The documents of ``coll`` matching ``filter``, in insertion order."""
        ...

    def count(self, coll: str, filter: Mapping[str, Any]) -> int:
        """How many documents ``find`` would return."""
        ...

    def delete(self, coll: str, filter: Mapping[str, Any]) -> int:
        """Remove the matching documents; returns how many.  Durable when it returns."""
        ...

    def close(self) -> None:
        """Release the backend (idempotent); later calls raise StoreError."""
        ...


# --------------------------------------------------------------------------- matching


def json_equal(a: object, b: object) -> bool:
    """JSON equality of two decoded values (see the module docstring)."""
    if a is b:
        return True
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:  # bool is an int subclass: keep true != 1
        return False  # two bools that are equal are the same object (handled above)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a == b  # exact comparison of int and float, as Python does it
    if ta is not tb:
        return False
    if ta is str:
        return a == b
    if ta is list:
        assert isinstance(a, list) and isinstance(b, list)
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is dict:
        assert isinstance(a, dict) and isinstance(b, dict)
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    return a == b  # None (the same object anyway)


def matches(doc: Mapping[str, Any], filter: Mapping[str, Any]) -> bool:
    """Whether every member of ``filter`` is in ``doc`` with a JSON-equal value."""
    for key, want in filter.items():
        if key not in doc or not json_equal(doc[key], want):
            return False
    return True


def _id_lookup(filter: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(has_id, id): a filter on ``_id`` needs at most one document.  Stored ids are
    strings, so a non-string ``_id`` in a filter matches nothing (id None)."""
    if "_id" not in filter:
        return False, None
    value = filter["_id"]
    return True, value if isinstance(value, str) else None


def new_id() -> str:
    """A fresh random id (128 bits, hex); callers still check it is unused."""
    return os.urandom(16).hex()


# --------------------------------------------------------------------------- memory


class MemoryStore:
    """Collections as insertion-ordered dicts ``{_id: doc}`` under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._colls: dict[str, dict[str, Doc]] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def insert(self, coll: str, doc: Doc) -> str:
        given = doc.get("_id")
        with self._lock:
            self._check_open()
            docs = self._colls.setdefault(coll, {})
            if isinstance(given, str):
                if given in docs:
                    raise DuplicateIdError(coll, given)
                docs[given] = doc
                return given
            doc_id = new_id()
            while doc_id in docs:
                doc_id = new_id()
            docs[doc_id] = {**doc, "_id": doc_id}
            return doc_id

    def _candidates(self, coll: str, filter: Mapping[str, Any]) -> list[Doc]:
        docs = self._colls.get(coll)
        if not docs:
            return []
        has_id, doc_id = _id_lookup(filter)
        if has_id:
            one = docs.get(doc_id) if doc_id is not None else None
            return [one] if one is not None else []
        return list(docs.values())

    def find(self, coll: str, filter: Mapping[str, Any]) -> list[Doc]:
        with self._lock:
            self._check_open()
            candidates = self._candidates(coll, filter)
        if not filter:
            return candidates
        return [d for d in candidates if matches(d, filter)]

    def count(self, coll: str, filter: Mapping[str, Any]) -> int:
        if not filter:
            with self._lock:
                self._check_open()
                return len(self._colls.get(coll, ()))
        return len(self.find(coll, filter))

    def delete(self, coll: str, filter: Mapping[str, Any]) -> int:
        with self._lock:
            self._check_open()
            docs = self._colls.get(coll)
            if not docs:
                return 0
            gone = [d["_id"] for d in self._candidates(coll, filter) if matches(d, filter)]
            for doc_id in gone:
                del docs[doc_id]
            return len(gone)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._colls = {}


# --------------------------------------------------------------------------- sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    seq  INTEGER PRIMARY KEY,   -- insertion order
    coll TEXT NOT NULL,
    id   TEXT NOT NULL,
    body TEXT NOT NULL,         -- the document as compact JSON, _id included
    UNIQUE (coll, id)
)
"""
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_loads = json.loads


class SqliteStore:
    """Documents in one SQLite table, one shared connection guarded by a lock.

    The connection is in autocommit mode: every INSERT/DELETE is its own
    transaction, committed (WAL fsync'd: synchronous=FULL) before the call
    returns.  A multi-row delete runs in one explicit transaction.  Server-assigned
    ids are checked against existing ones by the UNIQUE constraint (retry on clash).
    """

    def __init__(self, path: str) -> None:
        import sqlite3

        self._sqlite3 = sqlite3
        self._lock = threading.Lock()
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path!r}: {exc}") from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise StoreError(f"cannot use WAL journaling on {path!r} (got {mode!r})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot use {path!r}: {exc}") from None
        except StoreError:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    def insert(self, coll: str, doc: Doc) -> str:
        given = doc.get("_id")
        sqlite3 = self._sqlite3
        with self._lock:
            db = self._conn()
            try:
                if isinstance(given, str):
                    try:
                        db.execute(
                            "INSERT INTO docs (coll, id, body) VALUES (?, ?, ?)",
                            (coll, given, _dumps(doc)),
                        )
                    except sqlite3.IntegrityError:
                        raise DuplicateIdError(coll, given) from None
                    return given
                while True:
                    doc_id = new_id()
                    try:
                        db.execute(
                            "INSERT INTO docs (coll, id, body) VALUES (?, ?, ?)",
                            (coll, doc_id, _dumps({**doc, "_id": doc_id})),
                        )
                    except sqlite3.IntegrityError:
                        continue  # that id is taken (a client chose it): draw again
                    return doc_id
            except sqlite3.Error as exc:
                raise StoreError(f"insert failed: {exc}") from None

    def _rows(self, db: sqlite3.Connection, coll: str, filter: Mapping[str, Any]) -> list[Any]:
        """(seq, body) rows that may match, in insertion order."""
        has_id, doc_id = _id_lookup(filter)
        if has_id:
            if doc_id is None:
                return []
            return db.execute(
                "SELECT seq, body FROM docs WHERE coll = ? AND id = ?", (coll, doc_id)
            ).fetchall()
        return db.execute(
            "SELECT seq, body FROM docs WHERE coll = ? ORDER BY seq", (coll,)
        ).fetchall()

    def find(self, coll: str, filter: Mapping[str, Any]) -> list[Doc]:
        with self._lock:
            try:
                rows = self._rows(self._conn(), coll, filter)
            except self._sqlite3.Error as exc:
                raise StoreError(f"find failed: {exc}") from None
        docs = [_loads(body) for _seq, body in rows]
        if not filter:
            return docs
        return [d for d in docs if matches(d, filter)]

    def count(self, coll: str, filter: Mapping[str, Any]) -> int:
        if filter:
            return len(self.find(coll, filter))
        with self._lock:
            try:
                row = (
                    self._conn()
                    .execute("SELECT count(*) FROM docs WHERE coll = ?", (coll,))
                    .fetchone()
                )
            except self._sqlite3.Error as exc:
                raise StoreError(f"count failed: {exc}") from None
        return int(row[0])

    def delete(self, coll: str, filter: Mapping[str, Any]) -> int:
        with self._lock:
            db = self._conn()
            try:
                if not filter:
                    return db.execute("DELETE FROM docs WHERE coll = ?", (coll,)).rowcount
                gone = [
                    (seq,)
                    for seq, body in self._rows(db, coll, filter)
                    if matches(_loads(body), filter)
                ]
                if not gone:
                    return 0
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("DELETE FROM docs WHERE seq = ?", gone)
                    db.execute("COMMIT")
                except BaseException:
                    try:
                        db.execute("ROLLBACK")
                    except self._sqlite3.Error:
                        pass  # no transaction left to roll back
                    raise
                return len(gone)
            except self._sqlite3.Error as exc:
                raise StoreError(f"delete failed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except self._sqlite3.Error:
                pass
