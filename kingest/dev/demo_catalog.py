"""``kingest demo --catalog``: the demo on a team's own catalog instead of the built-in one.

The catalog is loaded as the service will load it (same schema, same typed topics), so a
catalog the service would refuse is refused here first, every problem listed. The demo
then applies its tables (``kingest schema apply``), produces plausible messages of the
envelope to the demo topic (when the catalog has one) and of each typed topic's message
type to that topic (:class:`~kingest.dev.catalog_stream.CatalogStream`), and starts the
service with ``KINGEST_CATALOG``, ``KINGEST_TOPIC_TYPES`` and ``KINGEST_DATABASE_SCHEMA``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kingest.catalog import Catalog, CatalogError, load_catalog
from kingest.config import BadEntriesError, parse_topic_types
from kingest.dev.catalog_stream import CatalogStream
from kingest.dev.catalog_values import CatalogSynthError
from kingest.store import SchemaPlan, apply_schema

__all__ = ["DEMO_SCHEMA", "DemoCatalog", "DemoCatalogError", "load_demo_catalog"]

#: The PostgreSQL schema of the demo's catalog tables, unless told otherwise.
DEMO_SCHEMA = "demo"


class DemoCatalogError(ValueError):
    """The demo's catalog options cannot run (every problem listed)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class DemoCatalog:
    """A loaded catalog, and what the demo produces: topic -> full name of its message type
    (the envelope topic first, then the typed topics)."""

    path: Path
    catalog: Catalog
    topic_types: Mapping[str, str]
    topics: Mapping[str, str]

    def service_env(self) -> dict[str, str]:
        """The settings that make ``kingest start`` ingest this catalog."""
        return {
            "KINGEST_CATALOG": str(self.path),
            "KINGEST_TOPIC_TYPES": ",".join(f"{t}:{m}" for t, m in self.topic_types.items()),
            "KINGEST_DATABASE_SCHEMA": self.catalog.schema,
            "KINGEST_TOPICS": ",".join(self.topics),
        }

    def streams(self, seed: int) -> dict[str, CatalogStream]:
        """A stream per topic, each of its topic's message type (seeds ``seed``, ``seed+1``...)."""
        return {
            topic: CatalogStream(self.catalog.descriptor_set, message, seed=seed + offset)
            for offset, (topic, message) in enumerate(self.topics.items())
        }

    def apply(self, database_url: str) -> SchemaPlan:
        """Create the catalog's tables (after the migrations), as ``kingest schema apply``."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            return apply_schema(conn, self.catalog)

    def table_counts(self, database_url: str) -> list[tuple[str, int]]:
        """Rows of each of the catalog's tables, in creation order."""
        with psycopg.connect(database_url) as conn:
            return [
                (table.name, _count(conn, self.catalog.schema, table.name))
                for table in self.catalog.tables
            ]


def _count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    ).fetchone()
    return int(row[0]) if row else 0


def load_demo_catalog(
    path: Path, *, schema: str, topic_types: str, envelope_topic: str
) -> DemoCatalog:
    """Load ``path`` for the demo; raises :class:`DemoCatalogError` listing every problem
    with the file, the typed topics (``topic:package.Message,...``), the schema name, or
    a message type no plausible message can be made of."""
    problems: list[str] = []
    types: dict[str, str] = {}
    try:
        types = {topic: name.lstrip(".") for topic, name in parse_topic_types(topic_types).items()}
    except BadEntriesError as error:
        problems += [f"--topic-types: {problem}" for problem in error.problems]
    if envelope_topic in types:
        problems.append(f"--topic-types: {envelope_topic} is the demo's envelope topic")
    if not path.is_file():
        problems.append(f"--catalog {path}: no such file")
    if problems:
        raise DemoCatalogError(problems)
    try:
        catalog = load_catalog(path, schema=schema, topic_types=types or None)
    except CatalogError as error:
        raise DemoCatalogError([f"--catalog {path}: {p}" for p in error.problems]) from None
    topics = {envelope_topic: catalog.envelope} if catalog.envelope else {}
    loaded = DemoCatalog(path.resolve(), catalog, types, {**topics, **types})
    try:
        loaded.streams(seed=0)
    except CatalogSynthError as error:
        raise DemoCatalogError([f"--catalog {path}: {error}"]) from None
    return loaded
