"""Flows: steps on several streams that wait for each other, as one piece of work.

A flow is a set of named steps, each one job on its own stream (``Step``): steps after nothing
run at the flow's ``run_at``; a step with ``after=[...]`` runs once every step it names has
succeeded; an ``on_complete`` step runs once, when every step has reached a final state.

Where things live. The steps' streams are different Cluster slots, so no script touches a flow
and a stream together:

    streamq:{flow:<F>}:flow     the flow's record (its own slot): each step's state, result and
                                error, held steps' envelopes, the flow's state (advance_flow.lua
                                and its siblings are the only writers)
    streamq:{S}:flows:outbox    per stream: steps of flows that ended on S and whose flow may
                                not have been told yet

How a step's end reaches its flow (an outbox, drained idempotently):

1. ``finish_jobs`` records the step's outcome and, in the same atomic step, adds
   ``<job id> <flow id> <step>`` to its stream's outbox. A job of no flow pays one comparison.
2. The worker then tells the flow (``tell``): it reads the job's record, runs ``advance_flow``
   (which writes the step's outcome once: a step already final is left alone), enqueues each
   step that became ``releasing`` with ``enqueue_jobs`` under the job id fixed at the flow's
   creation (a job whose record exists is skipped, so a repeated release adds nothing), marks
   them ``released``, and only then removes the outbox member.
3. A worker that dies anywhere in 2 leaves the member in the outbox; every worker of the
   stream sweeps members older than ``OUTBOX_GRACE_MS`` and does 2 again (``OutboxSweeper``).
   Every part of 2 is idempotent, so two workers doing it at once change nothing twice.

So a step's success releases its dependents once, the flow ends once (``advance_flow`` flips
``state`` from ``running`` once) and ``on_complete`` is enqueued once (under one job id), even
when workers die between finishing a step and telling the flow. The flow's end event
(``flow.<state>``) is written by the teller that ended it, or by a sweep when that teller
died, into its first step's stream, once (``announce``, ``lua/announce_flow.lua``).

Failure policies (``Step.on_failure``), for a step that ends dead or expired:
``fail_flow`` (default) its dependents are cancelled (theirs too) and the flow ends ``failed``;
``continue`` its dependents run and see its error in ``job.flow.errors``, the flow ends
``partially_done``; ``ignore`` the same, but the flow can still end ``done``. A cancelled step
always cancels its dependents. Other branches run on either way.
"""

from __future__ import annotations

import contextlib
import graphlib
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

import anyio
import msgspec
import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import codec, control, keys, scripts
from streamq.config import MAX_ATTEMPTS
from streamq.connection import TRANSIENT_ERRORS
from streamq.errors import (
    ConfigError,
    FlowError,
    FlowNotFound,
    InvalidJobState,
    JobNotFound,
    PayloadError,
)

if TYPE_CHECKING:
    from streamq.client import Queue
    from streamq.job import Job

log = logging.getLogger("streamq.flows")

OnFailure = Literal["fail_flow", "continue", "ignore"]
FlowState = Literal["scheduled", "running", "done", "failed", "cancelled", "partially_done"]
MAX_STEPS: Final = 100
RETENTION_MS: Final = 7 * 86_400_000
"""How long a finished flow's record (and a flow key) is kept."""
OUTBOX_GRACE_MS: Final = 1000
"""An outbox member this old was not drained by the worker that wrote it: the sweepers do it."""
SWEEP_BATCH: Final = 100
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
JOB_ENDED: Final = {"done": "done", "dead": "failed", "expired": "failed", "cancelled": "cancelled"}
"""A job record's final state -> its step's state in the flow."""
FINAL: Final = frozenset({"done", "failed", "cancelled"})


class Step(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One step of a flow: a job on ``stream`` that runs once the steps ``after`` succeeded."""

    name: str
    stream: str
    payload: Any = None
    after: list[str] = msgspec.field(default_factory=list)
    on_failure: OnFailure = "fail_flow"
    account: str | None = None
    priority: str = "normal"
    max_attempts: int | None = None
    expire_after: float | str | None = None
    job_timeout: float | str | None = None


class Flow(msgspec.Struct, frozen=True):
    """What ``enqueue_flow`` returns: the flow's id and each step's job id, by step name."""

    id: str
    jobs: dict[str, str]


class StepInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    job: str
    stream: str
    state: str
    """``held`` (waiting for the steps it is after), the job's state once enqueued (scheduled,
    queued, running, retrying, ...), or final: ``done``, ``failed``, ``cancelled``."""
    after: list[str]
    on_failure: str
    result: Any = None
    error: str | None = None


class FlowInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    state: FlowState
    steps: dict[str, StepInfo]
    """The steps, by name, the on_complete step included."""
    on_complete: str | None
    created_at_ms: int
    finished_at_ms: int | None = None
    key: str | None = None


# -- checking and creating --------------------------------------------------------------------


def check_steps(steps: Sequence[Step], on_complete: Step | None) -> list[Step]:
    """The flow's steps (on_complete last) if they can make a flow, else FlowError."""
    every = [*steps, *([] if on_complete is None else [on_complete])]
    if not steps:
        raise FlowError("a flow needs at least one step")
    if len(every) > MAX_STEPS:
        raise FlowError(f"a flow has at most {MAX_STEPS} steps, not {len(every)}")
    names: set[str] = set()
    for step in every:
        if not isinstance(step, Step):
            raise FlowError(f"a flow's steps are streamq.Step, not {type(step).__name__}")
        if not STEP_NAME.fullmatch(step.name):
            raise FlowError(
                f"invalid step name {step.name[:40]!r}: use 1-64 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        if step.name in names:
            raise FlowError(f"duplicate step name {step.name!r}")
        names.add(step.name)
        if step.on_failure not in get_args(OnFailure):
            raise FlowError(
                f"step {step.name!r}: unknown on_failure {step.on_failure!r}: use fail_flow, "
                "continue or ignore"
            )
    for step in steps:
        for before in step.after:
            if before not in names or (on_complete is not None and before == on_complete.name):
                raise FlowError(f"step {step.name!r} is after unknown step {before!r}")
    if on_complete is not None and on_complete.after:
        raise FlowError("the on_complete step runs after every step: give it no 'after'")
    try:
        graphlib.TopologicalSorter({s.name: s.after for s in steps}).prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise FlowError(f"the steps' 'after' make a cycle: {cycle}") from None
    return every


async def enqueue_flow(
    q: Queue,
    steps: Sequence[Step],
    *,
    run_at: datetime | None = None,
    on_complete: Step | None = None,
    key: str | None = None,
) -> Flow:
    """Check every step (names, order, streams, payloads) and, only if all pass, create the
    flow and enqueue the steps after nothing. With ``key``, a flow still running under that
    key is returned instead (its id and jobs) and nothing is added."""
    from streamq import scheduler
    from streamq.producer import _ms, check_priority, check_stream

    every = check_steps(steps, on_complete)
    if key is not None:
        keys.check_key(key)
    redis = q.redis
    now = await q.producer._server_now_ms()
    due = scheduler.due_ms(run_at, None, now_ms=now)
    flow_id = codec.new_job_id("flow", now)
    last = None if on_complete is None else on_complete.name
    spec_steps: list[dict[str, Any]] = []
    envelopes: dict[str, str] = {}
    for step in every:
        try:
            stream = check_stream(step.stream)
            priority = check_priority(step.priority)
            if step.account is not None:
                keys.check_account(step.account)
            # As enqueue checks it, before the flow's record (and this envelope) is written.
            if step.max_attempts is not None and not 1 <= step.max_attempts <= MAX_ATTEMPTS:
                raise ConfigError(f"max_attempts must be from 1 to {MAX_ATTEMPTS}")
            check = q.validator(stream)
            if check is not None:
                check([step.payload])
            placed = q.partition_of(stream, step.account) if step.account else stream
            if placed == stream and q._partition_count(stream) > 1:
                count = q._partition_count(stream)
                placed = keys.partition(stream, q.producer.route(count, None, None))
            job_id = codec.new_job_id(placed, now)
            root = not step.after and step.name != last
            envelope = codec.Envelope(
                id=job_id,
                payload=step.payload,
                enqueued_at_ms=now,
                run_at_ms=due if root else None,
                expire_after_ms=_ms(step.expire_after, "expire_after"),
                max_attempts=step.max_attempts,
                job_timeout_ms=_ms(step.job_timeout, "job_timeout"),
                account=step.account,
                flow=codec.FlowRef(id=flow_id, step=step.name),
            )
            encoded = codec.encode_new(envelope)
        except (ConfigError, PayloadError) as exc:
            raise type(exc)(f"step {step.name!r}: {exc}") from None
        except ValueError as exc:  # keys' checks: a ConfigError, as enqueue raises it
            raise ConfigError(f"step {step.name!r}: {exc}") from None
        max_bytes = q.config.stream(stream).max_payload_bytes
        if len(encoded) > max_bytes:
            raise PayloadError(
                f"step {step.name!r}: {len(encoded)} bytes encoded, over the stream's "
                f"max_payload_bytes of {max_bytes}"
            )
        envelopes[step.name] = encoded.decode()
        spec_steps.append(
            {
                "name": step.name,
                "job": job_id,
                "stream": placed,
                "priority": priority,
                "after": step.after,
                "on_failure": step.on_failure,
                "due": (due or 0) if root else 0,
                "last": step.name == last,
                "account": step.account,
            }
        )
    if key is not None:
        flow_id = await _claim(redis, key, flow_id)
    for stream in {s["stream"] for s in spec_steps}:
        await redis.sadd(keys.STREAM_REGISTRY, stream)
    spec = orjson.dumps({"steps": spec_steps, "on_complete": last}).decode()
    await scripts.create_flow(
        redis,
        flow_id,
        spec=spec,
        envelopes=orjson.dumps(envelopes).decode(),
        run_at_ms=due or 0,
        key=key or "",
    )
    # The flow's own record says which steps are its (another producer's, when the key was
    # taken): a drain now also finishes what a producer that died here had started.
    await drain(redis, flow_id)
    raw: Any = await redis.hget(keys.flow(flow_id), "spec")
    if raw is None:
        raise FlowNotFound(f"flow {flow_id} ended and expired while it was being enqueued")
    return Flow(flow_id, {s["name"]: s["job"] for s in orjson.loads(raw)["steps"]})


async def _claim(redis: Redis, key: str, flow_id: str) -> str:
    """The flow that ``key`` names once this call is done: ``flow_id``, or a flow still
    running under it (whose record a producer may still be writing: then it is adopted)."""
    for _ in range(3):
        holder = await scripts.claim_flow_key(redis, key, flow_id, ttl_ms=RETENTION_MS)
        if holder == flow_id:
            return flow_id
        state: Any = await redis.hget(keys.flow(holder), "state")
        if state is None or state == b"running":
            return holder
        taken = await scripts.claim_flow_key(
            redis, key, flow_id, finished=holder, ttl_ms=RETENTION_MS
        )
        if taken == flow_id:
            return flow_id
    raise InvalidJobState(f"flow key {key!r} changed hands three times: try again")


# -- releasing and telling --------------------------------------------------------------------


async def drain(redis: Redis, flow_id: str) -> list[str]:
    """Enqueue every step of the flow that is ``releasing`` (under its own job id: a job
    whose record exists is skipped), then mark them ``released``. Returns their names."""
    raw: Any = await redis.hgetall(keys.flow(flow_id))
    if not raw:
        return []
    record = {k.decode(): v for k, v in raw.items()}
    spec = orjson.loads(record["spec"])
    released = []
    counted = [s["name"] for s in spec["steps"] if not s["last"]]
    for step in spec["steps"]:
        name = step["name"]
        if record.get(f"s:{name}") != b"releasing" or f"env:{name}" not in record:
            continue
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for before in counted if step["last"] else step["after"]:
            result = record.get(f"r:{before}")
            results[before] = None if result is None else orjson.loads(result)
            error = record.get(f"e:{before}")
            if error is not None:
                errors[before] = error.decode()
        envelope = codec.decode(record[f"env:{name}"])
        envelope = msgspec.structs.replace(
            envelope, flow=codec.FlowRef(id=flow_id, step=name, results=results, errors=errors)
        )
        encoded = codec.encode(envelope).decode()
        row: codec.EnqueueRow = (
            codec.EnqueueRow(step["job"], "", encoded, step["due"])
            if envelope.account is None
            else codec.AccountEnqueueRow(step["job"], "", encoded, step["due"], envelope.account)
        )
        await scripts.enqueue_jobs(
            redis,
            step["stream"],
            step["priority"],
            [([step["job"]], codec.pack_rows([row]))],
            expire_after_ms=envelope.expire_after_ms,
        )
        # The scripts that end a job without a worker (cancel_job, promote_due's expiry,
        # dead_letter) read this to put the step in the outbox; finish_jobs needs no read.
        member = codec.outbox_member(step["job"], envelope.flow)  # type: ignore[arg-type]
        await redis.hset(keys.job(step["stream"], step["job"]), "flow", member)
        released.append(name)
    # A cancel_flow between the read above and this mark made these steps final as
    # 'cancelled' while their jobs were being enqueued: cancel the jobs, so they do not run.
    job_of = {step["name"]: step["job"] for step in spec["steps"]}
    for name in await scripts.mark_flow_released(redis, flow_id, released):
        with contextlib.suppress(JobNotFound, InvalidJobState):  # ended already
            await control.cancel(redis, job_of[name])
    return released


async def tell(redis: Redis, member: str, *, again: bool = False) -> None:
    """Tell a flow that its step ended (one outbox member ``<job id> <flow id> <step>``),
    release what that allows, and only then drop the member. Idempotent throughout. The
    flow's end event is written by the teller that ended the flow, or ``again`` (a sweep of
    a member someone left) when it is still to be written."""
    job_id, flow_id, step = member.split(" ")
    stream = keys.stream_of_job(job_id)
    state, result, error = await redis.hmget(keys.job(stream, job_id), "state", "result", "error")
    if state is not None and codec.text(state) not in JOB_ENDED:
        return  # not ended (yet): finish_jobs adds it when it does
    if state is None:
        step_state, text_error = "failed", "its job's record is gone"
    else:
        step_state = JOB_ENDED[codec.text(state)]
        text_error = "" if error is None else codec.text(error)
        if codec.text(state) == "expired" and not text_error:
            text_error = "expired: it came due too long ago to run"
    _, ended = await scripts.advance_flow(
        redis,
        flow_id,
        step,
        step_state,
        result="" if result is None or step_state != "done" else codec.text(result),
        error=text_error if step_state != "done" else "",
        retention_ms=RETENTION_MS,
    )
    if ended or again:
        await announce(redis, flow_id)
    await drain(redis, flow_id)
    await redis.zrem(keys.flow_outbox(stream), member)


async def announce(redis: Redis, flow_id: str) -> None:
    """Write the flow's end event (``flow.<state>``, with each step's final state) into the
    events of its first step's stream, and so to its webhooks, if the flow ended: once, as
    ``announce_flow`` keeps the flows that stream told. The record's ``announce`` is dropped
    only after, so a teller that dies in between leaves it to the sweep."""
    record_key = keys.flow(flow_id)
    raw: Any = await redis.hgetall(record_key)
    if b"announce" not in raw:
        return
    record = {k.decode(): v.decode() for k, v in raw.items()}
    spec = orjson.loads(record["spec"])
    steps = {
        step["name"]: record.get(f"s:{step['name']}") for step in spec["steps"] if not step["last"]
    }
    await scripts.announce_flow(
        redis,
        spec["steps"][0]["stream"],
        flow_id,
        f"flow.{record['announce']}",
        at_ms=int(record.get("finished_at", "0")),
        steps=orjson.dumps(steps).decode(),
        remember_ms=RETENTION_MS,
    )
    await redis.hdel(record_key, "announce")


async def tell_jobs(redis: Redis, jobs: Sequence[Job]) -> None:
    """After a batch was recorded: tell the flows of its steps that ended. A failure here
    loses nothing: the members stay in the outbox for the sweepers."""
    for job in jobs:
        flow = job.envelope.flow
        assert flow is not None
        try:
            await tell(redis, codec.outbox_member(job.id, flow))
        except Exception as exc:  # a bad flow record must not stop a worker: the outbox keeps it
            log.warning(
                "flow %s not told of %s yet (the outbox keeps it): %s", flow.id, job.id, exc
            )


async def sweep(redis: Redis, stream: str, now_ms: int) -> int:
    """Tell the flows of the outbox members older than the grace; returns how many."""
    members: Any = await redis.zrangebyscore(
        keys.flow_outbox(stream), "-inf", now_ms - OUTBOX_GRACE_MS, start=0, num=SWEEP_BATCH
    )
    for member in members:
        try:
            await tell(redis, codec.text(member), again=True)
        except (*TRANSIENT_ERRORS, redis_errors.ResponseError):
            raise
        except Exception as exc:  # one bad member (or flow record) must not stop the sweep
            log.warning(
                "flow outbox member %r of %s left: %s", codec.text(member)[:200], stream, exc
            )
    return len(members)


class OutboxSweeper:
    """Every worker sweeps its stream's flow outbox: what a dead worker left is told."""

    def __init__(self, redis: Redis, stream: str, now_ms: Any, period: float) -> None:
        self.redis, self.stream, self.now_ms, self.period = redis, stream, now_ms, period

    async def run(self) -> None:
        while True:
            try:
                await sweep(self.redis, self.stream, self.now_ms())
            except (*TRANSIENT_ERRORS, redis_errors.ResponseError) as exc:
                log.warning("flow outbox sweep of %s failed, will try again: %s", self.stream, exc)
            await anyio.sleep(self.period)


# -- reading and changing a flow --------------------------------------------------------------


async def flow_info(redis: Redis, flow_id: str) -> FlowInfo:
    raw: Any = await redis.hgetall(keys.flow(flow_id))
    if not raw:
        raise FlowNotFound(f"no flow {flow_id!r}")
    record = {k.decode(): v.decode() for k, v in raw.items()}
    spec = orjson.loads(record["spec"])
    steps: dict[str, StepInfo] = {}
    started = False
    for step in spec["steps"]:
        name = step["name"]
        state = record.get(f"s:{name}", "held")
        if state == "releasing":
            state = "held"
        if state == "released":
            job_state: Any = await redis.hget(keys.job(step["stream"], step["job"]), "state")
            state = "queued" if job_state is None else codec.text(job_state)
        if not step["last"] and state not in ("held", "scheduled", "queued"):
            started = True
        result = record.get(f"r:{name}")
        steps[name] = StepInfo(
            name=name,
            job=step["job"],
            stream=step["stream"],
            state=state,
            after=step["after"],
            on_failure=step["on_failure"],
            result=None if result is None else orjson.loads(result),
            error=record.get(f"e:{name}"),
        )
    flow_state = record.get("state", "running")
    if flow_state == "running":
        flow_state = "running" if started else "scheduled"
    finished = record.get("finished_at")
    return FlowInfo(
        id=flow_id,
        state=flow_state,
        steps=steps,
        on_complete=spec["on_complete"],
        created_at_ms=int(record.get("created_at", "0")),
        finished_at_ms=None if finished is None else int(finished),
        key=record.get("key"),
    )


async def cancel_flow(q: Queue, flow_id: str) -> FlowState:
    """Cancel every step not yet started: held steps never run, enqueued ones are cancelled
    on their streams (a running one sees ``job.cancelled``). Returns the flow's state."""
    reply = await scripts.cancel_flow(q.redis, flow_id, retention_ms=RETENTION_MS)
    if reply is None:
        raise FlowNotFound(f"no flow {flow_id!r}")
    _, ended, enqueued = reply
    info = await flow_info(q.redis, flow_id)
    by_job = {step.job: step.name for step in info.steps.values()}
    for job_id in enqueued:
        with contextlib.suppress(JobNotFound, InvalidJobState):
            await q.cancel(job_id)
        # Cancelled at once (not running): no worker finishes it, so tell the flow here.
        flow = codec.FlowRef(id=flow_id, step=by_job[job_id])
        await tell(q.redis, codec.outbox_member(job_id, flow))
    # Ended by the cancel itself (nothing was enqueued and not final).
    if ended:
        await announce(q.redis, flow_id)
    return (await flow_info(q.redis, flow_id)).state


async def counted_outcome(redis: Redis, job_id: str) -> tuple[str, str, str] | None:
    """For a step of a flow whose outcome the flow has counted: (flow id, step name, that
    outcome). A retry or replay runs the job again but does not change the flow (a flow's
    count is final, docs/flows.md); the CLI says so. None for any other job."""
    member: Any = await redis.hget(keys.job(keys.stream_of_job(job_id), job_id), "flow")
    if member is None:
        return None
    _, flow_id, step = codec.text(member).split(" ")
    state: Any = await redis.hget(keys.flow(flow_id), f"s:{step}")
    if state is None or codec.text(state) not in FINAL:
        return None
    return flow_id, step, codec.text(state)


async def reschedule_flow(q: Queue, flow_id: str, run_at: datetime) -> int:
    """Move every step that has not started and is scheduled; returns how many moved."""
    info = await flow_info(q.redis, flow_id)
    moved = 0
    for step in info.steps.values():
        if step.state == "scheduled":
            try:
                await q.reschedule(step.job, run_at=run_at)
            except (JobNotFound, InvalidJobState):
                continue
            moved += 1
    return moved
