"""The names kingest's spans use, in one place: the OpenTelemetry semantic conventions
for messaging (Kafka) and database clients, and kingest's own limits.

Every span module, the metric catalog and the metrics take their attribute names from
here, so one name is never spelled two ways; attributes under ``kingest.`` have no
convention and are written where they are set.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DB_BATCH_SIZE",
    "DB_NAMESPACE",
    "DB_OPERATION_NAME",
    "DB_STATUS_CODE",
    "DB_SYSTEM_NAME",
    "DEFAULT_MAX_LINKS",
    "ERROR_TYPE",
    "INSTRUMENTATION_NAME",
    "MESSAGING_BATCH_COUNT",
    "MESSAGING_CONSUMER_GROUP",
    "MESSAGING_CONVERSATION_ID",
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_KAFKA_OFFSET",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_PARTITION_ID",
    "MESSAGING_SYSTEM",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "TRACEPARENT_HEADER",
]

INSTRUMENTATION_NAME: Final = "kingest"
TRACEPARENT_HEADER: Final = "traceparent"
#: The SDK's default link limit per span (``OTEL_SPAN_LINK_COUNT_LIMIT``).
DEFAULT_MAX_LINKS: Final = 128

# --------------------------------------------------------------------------- attributes

MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_PARTITION_ID: Final = "messaging.destination.partition.id"
MESSAGING_CONSUMER_GROUP: Final = "messaging.consumer.group.name"
MESSAGING_BATCH_COUNT: Final = "messaging.batch.message_count"
MESSAGING_KAFKA_OFFSET: Final = "messaging.kafka.offset"
MESSAGING_CONVERSATION_ID: Final = "messaging.message.conversation_id"
DB_SYSTEM_NAME: Final = "db.system.name"
DB_NAMESPACE: Final = "db.namespace"
DB_OPERATION_NAME: Final = "db.operation.name"
DB_BATCH_SIZE: Final = "db.operation.batch.size"
DB_STATUS_CODE: Final = "db.response.status_code"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
