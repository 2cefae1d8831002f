"""A small typed actor runtime on plain threads.

Actors with bounded mailboxes (count and bytes), tell/ask, pools sharing one mailbox,
routers, supervision, orderly stop, and propagation of the OpenTelemetry context and a
correlation id from sender to receiver. No knowledge of any transport or database.
"""

from actors.actor import Actor, ActorStopped
from actors.context import (
    CorrelationLogFilter,
    correlation_scope,
    current_correlation_id,
    with_correlation_id,
)
from actors.cputime import cpu_seconds_by_thread
from actors.envelope import Envelope
from actors.mailbox import Mailbox, MailboxClosed, MailboxFull
from actors.pool import KeyRouter, Pool, RoundRobinRouter
from actors.supervision import (
    ActorRuntimeError,
    Directive,
    Failure,
    OneForOneSupervisor,
    Supervisor,
    escalate_always,
    restart_on_exception,
)
from actors.system import ActorSystem

__all__ = [
    "Actor",
    "ActorRuntimeError",
    "ActorStopped",
    "ActorSystem",
    "CorrelationLogFilter",
    "Directive",
    "Envelope",
    "Failure",
    "KeyRouter",
    "Mailbox",
    "MailboxClosed",
    "MailboxFull",
    "OneForOneSupervisor",
    "Pool",
    "RoundRobinRouter",
    "Supervisor",
    "correlation_scope",
    "cpu_seconds_by_thread",
    "current_correlation_id",
    "escalate_always",
    "restart_on_exception",
    "with_correlation_id",
]
