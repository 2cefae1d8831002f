"""kingest: Kafka to PostgreSQL ingest of AI/ML pipeline events."""

__version__ = "0.1.0"
