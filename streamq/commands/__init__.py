"""The ``streamq`` command's groups, one module each; each has ``register(commands)``, which
adds its parsers and sets ``run`` on each. A new group is one module here and one name in
GROUPS (its order is the order of ``streamq --help``)."""

from __future__ import annotations

from types import ModuleType

from streamq.commands import (
    account,
    admin,
    autoscale,
    completion,
    consume,
    cron,
    dead,
    enqueue,
    events,
    flow,
    health,
    job,
    jobs,
    limits,
    server,
    simulate,
    stats,
    tokens,
    top,
    workers,
)

GROUPS: tuple[ModuleType, ...] = (
    consume, enqueue, job, jobs, flow, dead, cron, stats, workers, events, account, tokens, limits,
    autoscale, admin, health, top, simulate, server, completion,
)  # fmt: skip
