"""librdkafka client properties derived from the settings."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer

from kingest.config.loading import load_settings
from kingest.kafka.consumer import client_config, consumer_config

ENV = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "KINGEST_TOPICS": "events",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://kingest@db/ml",
    "KINGEST_RDKAFKA_SECURITY_PROTOCOL": "SASL_SSL",
}


def test_helper_clients_carry_the_pass_through_properties_and_name_their_role() -> None:
    config = client_config(load_settings(ENV), "dead-letters")
    assert config["bootstrap.servers"] == "127.0.0.1:1"
    assert config["client.id"] == "kingest-dead-letters"
    assert config["security.protocol"] == "SASL_SSL"


def test_librdkafka_log_lines_go_through_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    config = consumer_config(load_settings(ENV))
    config.pop("security.protocol")  # no TLS needed to fail connecting to a closed port
    consumer = Consumer(config)
    try:
        with caplog.at_level(logging.DEBUG, logger="kingest.librdkafka"):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not caplog.records:
                consumer.poll(0.2)  # serves the queued log lines
    finally:
        consumer.close()
    assert any(r.name == "kingest.librdkafka" for r in caplog.records)
