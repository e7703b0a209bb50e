"""``streamq autoscale``: size worker pools from each stream's load."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import anyio

from streamq import metrics, platforms, signals
from streamq.client import Queue
from streamq.commands.common import command, duration, port, positive_int
from streamq.commands.consume import resolve_handler
from streamq.config import Config
from streamq.producer import check_stream


def register(commands: Any) -> None:
    scale = command(commands, "autoscale", "size worker pools from each stream's load", run)
    scale.add_argument("--target", choices=["local", "kubernetes"], default="local",
                       help="where workers run: processes here, or Deployments")  # fmt: skip
    scale.add_argument("--stream", action="append", required=True, help="a stream (repeatable)")
    scale.add_argument("--handler", help="local target: handler for the workers")
    scale.add_argument("--min", type=int, help="fewest workers per stream (0)")
    scale.add_argument("--max", type=positive_int, help="most workers per stream (10)")
    scale.add_argument("--concurrency", type=positive_int, help="per worker (the stream's)")
    scale.add_argument("--interval", type=duration, default=5.0, help="between decisions (5s)")
    scale.add_argument("--target-drain", type=duration, help="drain the backlog in (60s)")
    scale.add_argument("--lead", type=duration, help="count jobs due within (60s)")
    scale.add_argument("--tolerance", type=float, help="change nothing within (0.1)")
    scale.add_argument("--scale-up-window", type=duration, help="stabilization (0s)")
    scale.add_argument("--scale-down-window", type=duration, help="stabilization (5m)")
    scale.add_argument("--max-step-up", type=positive_int, help="workers added at once")
    scale.add_argument("--max-step-down", type=positive_int, help="removed at once (1)")
    scale.add_argument("--idle-after", type=duration, help="then scale to 0 (5m)")
    scale.add_argument("--dry-run", action="store_true", help="log decisions, change nothing")
    scale.add_argument("--metrics-port", type=port, help="serve Prometheus /metrics (0: any)")
    scale.add_argument("--metrics-host", default="127.0.0.1", help="metrics address")
    kube = scale.add_argument_group("kubernetes target")
    kube.add_argument("--namespace", help="of the Deployments (in-cluster: the pod's)")
    kube.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, ~/.kube)")
    kube.add_argument("--context", help="kubeconfig context")
    kube.add_argument("--deployment", default="streamq-consume-{stream}",
                      help="Deployment name for a stream without one in the config")  # fmt: skip
    kube.add_argument("--lease", default="streamq-autoscaler", help="Lease for leadership")


async def run(args: argparse.Namespace, config: Config) -> int:
    from autoscaler import controller, targets
    from autoscaler.policy import policy_for

    streams = [check_stream(stream) for stream in args.stream]
    policies = {
        stream: policy_for(
            config.stream(stream).autoscale,
            args.concurrency or config.stream(stream).concurrency,
            min_workers=args.min,
            max_workers=args.max,
            target_drain=args.target_drain,
            lead=args.lead,
            tolerance=args.tolerance,
            scale_up_window=args.scale_up_window,
            scale_down_window=args.scale_down_window,
            max_step_up=args.max_step_up,
            max_step_down=args.max_step_down,
            idle_after=args.idle_after,
        )
        for stream in streams
    }
    if args.metrics_port is not None:
        exposition = metrics.serve(args.metrics_port, args.metrics_host)
        logging.getLogger("streamq.autoscaler").info("serving metrics at %s", exposition.url)
    async with Queue(args.redis_url, config=config) as q:
        leadership: controller.Leadership | None = None
        target: targets.Target
        if args.target == "kubernetes":
            target, leadership = await _kubernetes_target(args, config, streams)
            if args.dry_run:  # reads the Deployments' sizes, patches nothing, takes no Lease
                target, leadership = targets.DryRun(over=target), controller.Unelected()
        elif args.dry_run:
            target, leadership = targets.DryRun(), controller.Unelected()
        else:
            assert q.resolved_url is not None
            target = targets.LocalTarget(
                consume_args(args, config, streams, policies),
                env={"STREAMQ_REDIS_URL": q.resolved_url},
            )
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_cancel_on_signal, tasks.cancel_scope)
                await controller.run(
                    q.redis,
                    streams,
                    policies,
                    target,
                    config,
                    leadership=leadership,
                    interval=args.interval,
                )
        finally:
            with anyio.CancelScope(shield=True):
                await target.close()  # local workers finish their running jobs first
    return 0


def consume_args(
    args: argparse.Namespace,
    config: Config,
    streams: list[str],
    policies: dict[str, Any],
) -> dict[str, list[str]]:
    """The `streamq consume` command line of each stream's local workers (the server's URL
    goes in their environment)."""
    consume: dict[str, list[str]] = {}
    for stream in streams:
        if platforms.publisher_for(stream, config.stream(stream), handler=args.handler) is None:
            resolve_handler(stream, args.handler, config.stream(stream))  # fail early
        spec = ["--stream", stream]
        spec += ["--concurrency", str(policies[stream].concurrency), "--log-level", args.log_level]
        spec += ["--log-format", args.log_format]
        if args.handler:
            spec += ["--handler", args.handler]
        if args.config:
            spec += ["--config", args.config]
        consume[stream] = spec
    return consume


async def _kubernetes_target(
    args: argparse.Namespace, config: Config, streams: list[str]
) -> tuple[Any, Any]:
    from autoscaler import controller, kubernetes

    api = await kubernetes.api_client(args.kubeconfig, args.context)
    namespace = args.namespace or kubernetes.default_namespace(args.kubeconfig, args.context)
    deployments = {
        stream: config.stream(stream).autoscale.deployment or args.deployment.format(stream=stream)
        for stream in streams
    }
    lease = kubernetes.LeaseLeadership(
        api,
        namespace,
        args.lease,
        identity=controller.identity(),
        duration_seconds=max(3 * args.interval, 15.0),
    )
    return kubernetes.KubernetesTarget(api, namespace, deployments), lease


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    def handle(name: str) -> bool:
        scope.cancel()
        return True

    await signals.on_stop_signals(handle)
