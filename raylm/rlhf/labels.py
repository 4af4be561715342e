"""The preference-label database: items (a prompt and k sampled answers), who ranked them how, and the pairs.

    store = LabelStore(label_database_url(cfg))          # SQLite in <run>/labels/labels.db, or any SQLAlchemy URL
    store.add_items([NewItem(messages, answers, model, meta)])
    item = store.next_item("alice", overlap=1)           # leased to alice for lease_s; a reload gets it back
    store.submit_ranking(item.id, "alice", [2, 0, 3, 1]) # answer indices best -> worst; stores k*(k-1)/2 pairs
    store.export_trl("prefs.jsonl")                      # TRL's conversational preference format
    python -m pytest tests/rlhf/test_labels.py -q        # the behaviour below, on SQLite

Tables: labelers(name, kind), items, rankings (one per item and labeler), preference_pairs
(chosen/rejected answer indices, derived from each ranking when it is stored), verdicts (skip or
flag, per labeler), leases (at most one per labeler). A labeler's kind (human, synthetic, import)
is fixed when the name is first seen, so a report can always tell synthetic labels from people's.

Handing out items is the only contended part: several people (page replicas, the synthetic rater's
processes) ask for the next item at once, and with overlap 1 two of them must never get the same one.
`next_item` chooses and leases in one transaction: on SQLite every transaction starts with BEGIN
IMMEDIATE (the write lock first, so two choices cannot interleave; WAL keeps readers going and the
busy timeout makes the others wait instead of failing); elsewhere (PostgreSQL) the chosen item's row is
locked FOR UPDATE and the choice re-checked before the lease is written.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Column, DateTime, Float, ForeignKey, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, create_engine, delete, event, func, insert, make_url, select, update)
from sqlalchemy.exc import IntegrityError

metadata = MetaData()
labelers = Table("labelers", metadata,
                 Column("name", String(64), primary_key=True),
                 Column("kind", String(32), nullable=False))
items = Table("items", metadata,
              Column("id", Integer, primary_key=True, autoincrement=True),
              Column("messages", JSON, nullable=False),
              Column("answers", JSON, nullable=False),
              Column("model", Text, nullable=False, index=True),
              Column("meta", JSON, nullable=False),
              Column("created_at", DateTime, nullable=False))
rankings = Table("rankings", metadata,
                 Column("id", Integer, primary_key=True, autoincrement=True),
                 Column("item_id", ForeignKey("items.id"), nullable=False, index=True),
                 Column("labeler", ForeignKey("labelers.name"), nullable=False),
                 Column("order", JSON, nullable=False),
                 Column("model", Text, nullable=False),  # the item's: which model's answers these pairs judge
                 Column("created_at", DateTime, nullable=False),
                 UniqueConstraint("item_id", "labeler"))
preference_pairs = Table("preference_pairs", metadata,
                         Column("id", Integer, primary_key=True, autoincrement=True),
                         Column("ranking_id", ForeignKey("rankings.id"), nullable=False, index=True),
                         Column("item_id", ForeignKey("items.id"), nullable=False),
                         Column("labeler", ForeignKey("labelers.name"), nullable=False),
                         Column("chosen", Integer, nullable=False),
                         Column("rejected", Integer, nullable=False))
verdicts = Table("verdicts", metadata,
                 Column("id", Integer, primary_key=True, autoincrement=True),
                 Column("item_id", ForeignKey("items.id"), nullable=False, index=True),
                 Column("labeler", ForeignKey("labelers.name"), nullable=False),
                 Column("verdict", String(8), nullable=False),  # "skip" or "flag"
                 Column("note", Text, nullable=False, default=""),
                 Column("created_at", DateTime, nullable=False),
                 UniqueConstraint("item_id", "labeler", "verdict"))
leases = Table("leases", metadata,
               Column("labeler", ForeignKey("labelers.name"), primary_key=True),  # one item at a time
               Column("item_id", ForeignKey("items.id"), nullable=False, index=True),
               Column("expires_at", Float, nullable=False))  # epoch seconds: compares the same in every database

NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
ROLES = ("system", "user", "assistant")


@dataclass
class NewItem:
    messages: list[dict]  # the prompt (OpenAI messages: optional system + user)
    answers: list[str]    # k answer texts, in the order they are shown
    model: str            # which model sampled them (a checkpoint URI/digest string)
    meta: dict            # e.g. {"family": "poem", "subject": "river", "split": "train"}


@dataclass
class Item:
    id: int
    messages: list[dict]
    answers: list[str]
    model: str
    meta: dict


@dataclass
class Ranking:
    item: Item
    labeler: str
    labeler_kind: str
    order: list[int]  # answer indices, best -> worst
    created_at: datetime


@dataclass
class Pair:
    item_id: int
    labeler: str
    chosen: int  # answer indices
    rejected: int


def default_url(path) -> str:
    """sqlite:///<absolute path>, with the parent folder made."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def label_database_url(cfg) -> str:
    """The run's label database: preferences.database_url, else SQLite at <run>/labels/labels.db, which only
    a local run folder can hold (SQLite needs a filesystem with working locks, not a bucket)."""
    from raylm.errors import InputError
    from raylm.storage import Storage

    if cfg.preferences.database_url:
        return cfg.preferences.database_url
    storage = Storage(cfg.storage)
    if not storage.is_local:
        raise InputError(f"storage {storage.uri()} is not a local folder: set preferences.database_url "
                         f"(e.g. postgresql://user@host/labels) for the label database")
    return default_url(Path(storage.path(cfg.name)) / "labels" / "labels.db")


def shown_url(url: str) -> str:
    """The URL as it may be printed: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC: SQLite keeps no time zone


def _name(labeler) -> str:
    if not isinstance(labeler, str) or not NAME.fullmatch(labeler.strip()):
        raise ValueError(f"labeler name must be 1 to 64 printable characters, got {labeler!r}")
    return labeler.strip()


def _item(row) -> Item:
    return Item(row.id, row.messages, row.answers, row.model, row.meta)


def check_order(order, k: int) -> list[int]:
    if (not isinstance(order, (list, tuple)) or any(type(i) is not int for i in order)
            or sorted(order) != list(range(k))):
        raise ValueError(f"order must list each answer index 0..{k - 1} once, best first; got {order!r}")
    return list(order)


def ranking_pairs(order: list[int]) -> list[tuple[int, int]]:
    """(chosen, rejected) for every two answers: each answer beats every answer ranked below it."""
    return [(better, worse) for i, better in enumerate(order) for worse in order[i + 1:]]


def _check_new(item: NewItem) -> None:
    if (not isinstance(item.messages, list) or not item.messages
            or any(not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)
                   for m in item.messages)):
        raise ValueError(f"messages must be a non-empty list of {{role, content}} with role in {ROLES}")
    if not isinstance(item.answers, list) or len(item.answers) < 2 or not all(isinstance(a, str)
                                                                             for a in item.answers):
        raise ValueError("answers must be a list of two or more strings")
    if not isinstance(item.model, str) or not isinstance(item.meta, dict):
        raise ValueError("model must be a string and meta a dict")


class LabelStore:
    def __init__(self, url: str):
        self.url = url
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"check_same_thread": False} if sqlite else {},
                                    pool_pre_ping=not sqlite)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        with self.engine.begin() as conn:  # one transaction: two processes opening a new file do not race
            metadata.create_all(conn)

    # --- writing ------------------------------------------------------------------------------------
    def add_items(self, new: list[NewItem]) -> list[int]:
        for item in new:
            _check_new(item)
        with self.engine.begin() as conn:
            return [self._insert_item(conn, item) for item in new]

    def next_item(self, labeler: str, overlap: int = 1, lease_s: float = 900, kind: str = "human") -> Item | None:
        """The item this labeler holds a live lease on, else the oldest one still open to them, leased."""
        labeler, now = _name(labeler), time.time()
        if type(overlap) is not int or overlap < 1 or not lease_s > 0:
            raise ValueError(f"overlap must be an integer >= 1 and lease_s > 0, got {overlap!r}, {lease_s!r}")
        with self.engine.begin() as conn:
            self._labeler(conn, labeler, kind)
            held = conn.execute(select(leases.c.item_id).where(leases.c.labeler == labeler,
                                                               leases.c.expires_at > now)).scalar()
            if held is not None and conn.execute(self._open(labeler, overlap, now).where(items.c.id == held)
                                                 ).first() is not None:
                conn.execute(update(leases).where(leases.c.labeler == labeler).values(expires_at=now + lease_s))
                return self._get(conn, held)
            conn.execute(delete(leases).where(leases.c.labeler == labeler))
            for _ in range(50):  # only another labeler's concurrent lease (not on SQLite) makes this go round
                candidate = conn.execute(self._open(labeler, overlap, now).order_by(items.c.id).limit(1)).scalar()
                if candidate is None:
                    return None
                conn.execute(select(items.c.id).where(items.c.id == candidate).with_for_update())
                if conn.execute(self._open(labeler, overlap, now).where(items.c.id == candidate)).first():
                    conn.execute(insert(leases).values(labeler=labeler, item_id=candidate,
                                                       expires_at=now + lease_s))
                    return self._get(conn, candidate)
        raise RuntimeError("could not lease an item: every candidate was taken while choosing")

    @staticmethod
    def _open(labeler: str, overlap: int, now: float):
        """Items open to `labeler`: not flagged by anyone, not ranked, skipped (or flagged) by them, and with
        fewer than `overlap` rankings plus other labelers' live leases (a leased item counts as being ranked,
        so overlap 1 hands each item to one person at a time and no item gets more than `overlap` rankings)."""
        ranked = select(func.count()).where(rankings.c.item_id == items.c.id).scalar_subquery()
        leased = select(func.count()).where(leases.c.item_id == items.c.id, leases.c.labeler != labeler,
                                            leases.c.expires_at > now).scalar_subquery()
        return select(items.c.id).where(
            items.c.id.not_in(select(rankings.c.item_id).where(rankings.c.labeler == labeler)),
            items.c.id.not_in(select(verdicts.c.item_id).where(verdicts.c.labeler == labeler)),
            items.c.id.not_in(select(verdicts.c.item_id).where(verdicts.c.verdict == "flag")),
            ranked + leased < overlap)

    def submit_ranking(self, item_id: int, labeler: str, order: list[int], kind: str = "human") -> int:
        """Stores the ranking and its k*(k-1)/2 (chosen, rejected) pairs; releases the lease; returns the pairs."""
        labeler = _name(labeler)
        with self.engine.begin() as conn:
            self._labeler(conn, labeler, kind)
            pairs = self._rank(conn, self._get(conn, item_id), labeler, order)
            conn.execute(delete(leases).where(leases.c.labeler == labeler))
        return pairs

    def skip(self, item_id: int, labeler: str) -> None:
        """This labeler will not see the item again; others still will."""
        self._verdict(item_id, labeler, "skip", "")

    def flag(self, item_id: int, labeler: str, note: str = "") -> None:
        """The item is broken or unfit: nobody is shown it again, and export leaves its pairs out."""
        self._verdict(item_id, labeler, "flag", str(note)[:2000])

    def _verdict(self, item_id: int, labeler: str, verdict: str, note: str) -> None:
        labeler = _name(labeler)
        with self.engine.begin() as conn:
            item = self._get(conn, item_id)
            if conn.execute(select(labelers.c.kind).where(labelers.c.name == labeler)).scalar() is None:
                self._labeler(conn, labeler, "human")
            if not conn.execute(select(verdicts.c.id).where(verdicts.c.item_id == item.id, verdicts.c.labeler
                                                            == labeler, verdicts.c.verdict == verdict)).first():
                conn.execute(insert(verdicts).values(item_id=item.id, labeler=labeler, verdict=verdict, note=note,
                                                     created_at=_now()))
            released = leases.c.item_id == item.id
            conn.execute(delete(leases).where(released if verdict == "flag" else released & (leases.c.labeler
                                                                                               == labeler)))

    def import_pairs(self, path, labeler: str = "import", model: str = "import") -> int:
        """JSONL preference pairs (TRL conversational, or plain strings) as 2-answer items ranked [0, 1] by
        `labeler` (kind "import"). Every line is checked before anything is written."""
        new = []
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        new.append(_pair_item(json.loads(line), model, str(path), number))
                    except (ValueError, TypeError, AttributeError, KeyError) as err:
                        raise ValueError(f"{path}:{number}: not a preference pair: {err}") from None
        labeler = _name(labeler)
        with self.engine.begin() as conn:  # all lines or none: a half import would leave unranked items open
            self._labeler(conn, labeler, "import")
            for item in new:
                item_id = self._insert_item(conn, item)
                self._rank(conn, Item(item_id, item.messages, item.answers, item.model, item.meta), labeler, [0, 1])
        return len(new)

    def seal(self) -> None:
        """Close a SQLite database into one self-contained file (WAL merged back), so that the file alone
        can be copied (the preferences step's snapshot on bucket storage); the store is closed after."""
        self.engine.dispose()
        if self.engine.url.get_backend_name() == "sqlite":
            import sqlite3

            with closing(sqlite3.connect(self.engine.url.database)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode = DELETE")

    # --- reading ------------------------------------------------------------------------------------
    def count_items(self, model: str | None = None) -> int:
        query = select(func.count()).select_from(items)
        with self.engine.connect() as conn:
            return conn.execute(query if model is None else query.where(items.c.model == model)).scalar()

    def items(self, model: str | None = None) -> list[Item]:
        """Every item, oldest first (only `model`'s when given). (Inside methods `items` is still the table.)"""
        query = select(items).order_by(items.c.id)
        with self.engine.connect() as conn:
            return [_item(row) for row in conn.execute(query if model is None else query.where(items.c.model
                                                                                              == model))]

    def count_open(self, overlap: int = 1) -> int:
        """Items that still want rankings: not flagged, fewer than `overlap` rankings (leases aside)."""
        ranked = select(func.count()).where(rankings.c.item_id == items.c.id).scalar_subquery()
        flagged = select(verdicts.c.item_id).where(verdicts.c.verdict == "flag")
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(items).where(
                items.c.id.not_in(flagged), ranked < overlap)).scalar()

    def ranked_by(self, labeler: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).where(rankings.c.labeler == _name(labeler))).scalar()

    def rankings(self, model: str | None = None, kind: str | None = None) -> list[Ranking]:
        query = (select(items, rankings.c.labeler, rankings.c["order"], rankings.c.created_at.label("ranked_at"),
                        labelers.c.kind)
                 .join_from(rankings, items).join(labelers, labelers.c.name == rankings.c.labeler)
                 .order_by(rankings.c.id))
        if model is not None:
            query = query.where(rankings.c.model == model)
        if kind is not None:
            query = query.where(labelers.c.kind == kind)
        with self.engine.connect() as conn:
            return [Ranking(_item(row), row.labeler, row.kind, row.order,
                            row.ranked_at.replace(tzinfo=timezone.utc)) for row in conn.execute(query)]

    def pairs(self) -> list[Pair]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(preference_pairs).order_by(preference_pairs.c.id))
            return [Pair(r.item_id, r.labeler, r.chosen, r.rejected) for r in rows]

    def agreement(self) -> dict:
        """Over items ranked by two or more labelers: the share of (labeler pair, answer pair) comparisons in
        which both labelers put the two answers in the same order."""
        by_item: dict[int, list[list[int]]] = {}
        for ranking in self.rankings():
            by_item.setdefault(ranking.item.id, []).append(ranking.order)
        shared = {item: orders for item, orders in by_item.items() if len(orders) >= 2}
        compared = same = 0
        for orders in shared.values():
            places = [{answer: place for place, answer in enumerate(order)} for order in orders]
            for i, first in enumerate(places):
                for second in places[i + 1:]:
                    for a in range(len(first)):
                        for b in range(a + 1, len(first)):
                            compared += 1
                            same += (first[a] < first[b]) == (second[a] < second[b])
        return {"items": len(shared), "pairs": compared, "agreement": same / compared if compared else None}

    def stats(self) -> dict:
        with self.engine.connect() as conn:
            count = lambda query: conn.execute(query).scalar()  # noqa: E731
            kinds = conn.execute(select(labelers.c.kind, func.count()).group_by(labelers.c.kind)).all()
            return {
                "items": count(select(func.count()).select_from(items)),
                "ranked": count(select(func.count(rankings.c.item_id.distinct()))),
                "rankings": count(select(func.count()).select_from(rankings)),
                "skipped": count(select(func.count()).where(verdicts.c.verdict == "skip")),
                "flagged": count(select(func.count(verdicts.c.item_id.distinct())).where(verdicts.c.verdict
                                                                                          == "flag")),
                "labelers": {kind: n for kind, n in kinds},
                "pairs": count(select(func.count()).select_from(preference_pairs)),
            }

    def export_trl(self, path) -> int:
        """One JSONL line per preference pair in TRL's conversational format; pairs of flagged items are left
        out (flagged means unfit to learn from). Written to a temporary name, then renamed into place."""
        flagged = select(verdicts.c.item_id).where(verdicts.c.verdict == "flag")
        query = (select(items.c.messages, items.c.answers, preference_pairs.c.chosen, preference_pairs.c.rejected)
                 .join_from(preference_pairs, items).where(items.c.id.not_in(flagged))
                 .order_by(preference_pairs.c.id))
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        lines = 0
        with self.engine.connect() as conn, open(partial, "w", encoding="utf-8") as out:
            for row in conn.execute(query):
                answer = lambda i: [{"role": "assistant", "content": row.answers[i]}]  # noqa: E731
                out.write(json.dumps({"prompt": row.messages, "chosen": answer(row.chosen),
                                      "rejected": answer(row.rejected)}, ensure_ascii=False) + "\n")
                lines += 1
        partial.replace(path)
        return lines

    # --- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _labeler(conn, name: str, kind: str) -> None:
        """Registers the labeler with `kind` on first sight; a name is never reused for another kind."""
        if not isinstance(kind, str) or not KIND.fullmatch(kind):
            raise ValueError(f"labeler kind must be a short lowercase word (human, synthetic), got {kind!r}")
        known = conn.execute(select(labelers.c.kind).where(labelers.c.name == name)).scalar()
        if known is None:
            conn.execute(insert(labelers).values(name=name, kind=kind))
        elif known != kind:
            raise ValueError(f"labeler name '{name}' belongs to a {known} labeler, not {kind}: choose another name")

    @staticmethod
    def _insert_item(conn, item: NewItem) -> int:
        row = {"messages": item.messages, "answers": item.answers, "model": item.model, "meta": item.meta,
               "created_at": _now()}
        return conn.execute(insert(items).values(row)).inserted_primary_key[0]

    @staticmethod
    def _rank(conn, item: Item, labeler: str, order) -> int:
        """The ranking row and its pairs, in the caller's transaction; returns the number of pairs."""
        order = check_order(order, len(item.answers))
        if conn.execute(select(rankings.c.id).where(rankings.c.item_id == item.id,
                                                    rankings.c.labeler == labeler)).first():
            raise ValueError(f"{labeler} has already ranked item {item.id}")
        try:
            ranking_id = conn.execute(insert(rankings).values(
                item_id=item.id, labeler=labeler, order=order, model=item.model, created_at=_now())
            ).inserted_primary_key[0]
        except IntegrityError:  # the same labeler in two tabs at once (only possible off SQLite)
            raise ValueError(f"{labeler} has already ranked item {item.id}") from None
        pairs = ranking_pairs(order)
        conn.execute(insert(preference_pairs), [{"ranking_id": ranking_id, "item_id": item.id, "labeler": labeler,
                                                 "chosen": c, "rejected": r} for c, r in pairs])
        return len(pairs)

    @staticmethod
    def _get(conn, item_id) -> Item:
        row = conn.execute(select(items).where(items.c.id == item_id)).first() if type(item_id) is int else None
        if row is None:
            raise ValueError(f"no item {item_id!r} in the label database")
        return _item(row)


def _pair_item(line: dict, model: str, source: str, number: int) -> NewItem:
    """One chosen/rejected line -> a 2-answer item (answer 0 chosen)."""
    prompt = line["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    answers = [_answer(line["chosen"], "chosen"), _answer(line["rejected"], "rejected")]
    item = NewItem(messages, answers, model, {"source": source, "line": number})
    _check_new(item)
    return item


def _answer(value, field: str) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content") if value[0].get("role") == "assistant" else None
    if not isinstance(value, str):
        raise ValueError(f"'{field}' must be a string or [{{\"role\": \"assistant\", \"content\": ...}}]")
    return value


def _sqlite_connect(dbapi_connection, record) -> None:
    """SQLAlchemy's recipe for real SQLite transactions: the driver's own BEGIN is turned off (the engine's
    "begin" event sends BEGIN IMMEDIATE instead); WAL lets readers run beside the one writer, and a writer
    waits up to 30 s for the lock instead of failing with "database is locked"."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()
