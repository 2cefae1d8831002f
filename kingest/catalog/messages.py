"""Message classes of a catalog, to parse Kafka values with.

A catalog gets a descriptor pool of its own, built from its descriptor set, so two
catalogs (or a catalog and the built-in generated classes) never clash on a file or
message name. The classes are the runtime's own (upb), as fast as generated code.
"""

from __future__ import annotations

from functools import cache

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from google.protobuf.message import Message

from kingest.catalog.model import Catalog

__all__ = ["message_class"]


@cache
def _pool(digest: str, descriptor_set: bytes) -> descriptor_pool.DescriptorPool:
    del digest  # the cache key: equal sets share one pool
    pool = descriptor_pool.DescriptorPool()
    for file in FileDescriptorSet.FromString(descriptor_set).file:
        pool.Add(file)
    return pool


def _descriptor(catalog: Catalog, full_name: str) -> Descriptor:
    return _pool(catalog.digest, catalog.descriptor_set).FindMessageTypeByName(full_name)


def message_class(catalog: Catalog, full_name: str) -> type[Message]:
    """The class of ``full_name`` (``pkg.Message``) in ``catalog``'s own pool."""
    return message_factory.GetMessageClass(_descriptor(catalog, full_name))
