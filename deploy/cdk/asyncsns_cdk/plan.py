"""What the stacks build, derived from the topology alone (pure: no CDK, testable as is).

The local gateway (stack.gateway) and the ALB route by the same table; the queues, workers
and grants follow the services' declarations.
"""

from dataclasses import dataclass

from stack.gateway import WEBSOCKET_PREFIX, route_table
from stack.topology import Service, Topology, Worker

# An ALB rule holds at most five condition values; GET also answers HEAD, as in the gateway.
METHODS = {"GET": ("GET", "HEAD")}


@dataclass(frozen=True)
class Route:
    """One ALB listener rule: requests whose path starts with `path` (and, if given, whose
    method is one of `methods`) go to `service`."""

    priority: int
    service: str
    path: str
    methods: tuple[str, ...] = ()

    @property
    def path_pattern(self) -> str:
        # A prefix, as nginx's `location /prefix` in the gateway: "/api/posts" also takes
        # "/api/posts/1" and "/api/posts?cursor=…" (the ALB matches the path only).
        return f"{self.path}*"

    @property
    def websocket(self) -> bool:
        return self.path.startswith(WEBSOCKET_PREFIX)


def routes(topology: Topology) -> tuple[Route, ...]:
    """The listener rules, in the order the gateway's nginx would choose: the longest prefix
    first, and on one prefix the method-specific rule before the catch-all one."""
    table = route_table({s.name: [s.name] for s in topology.services}, topology)
    ordered = sorted(((path, method, upstream) for path, owners in table.items()
                      for method, upstream in owners.items()),
                     key=lambda r: (-len(r[0]), r[1] is None, r[0], r[1] or ""))
    return tuple(
        Route(priority=(i + 1) * 10, service=upstream.removeprefix("svc_"), path=path,
              methods=METHODS.get(method, (method,)) if method else ())
        for i, (path, method, upstream) in enumerate(ordered))


@dataclass(frozen=True)
class Task:
    """One Fargate service: a service's web app, or one of its workers (same image)."""

    service: Service
    worker: Worker | None = None

    @property
    def name(self) -> str:
        return self.worker.name if self.worker else self.service.name

    @property
    def app(self) -> str:
        return self.worker.app if self.worker else f"{self.service.name}_svc.main:build_app"

    @property
    def serves_http(self) -> bool:
        """Whether clients reach it through the ALB (workers answer health checks only)."""
        return self.worker is None and bool(self.service.routes)

    @property
    def replicas(self) -> int:
        return 1 if self.worker else self.service.replicas

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue it consumes: CONSUME_QUEUES, and the query service's archive queues."""
        if self.worker:
            return tuple(u.queue for u in self.worker.uploads)
        return tuple(s.queue for s in self.service.subscriptions)

    @property
    def archives(self) -> bool:
        return self.worker is None and any(s.archive for s in self.service.subscriptions)


def tasks(topology: Topology) -> tuple[Task, ...]:
    return tuple(t for s in topology.services
                 for t in (Task(s), *(Task(s, w) for w in s.workers)))


def queues(topology: Topology) -> dict[str, str]:
    """Every queue that has a DLQ: queue name -> DLQ name."""
    pairs = {s.queue: s.dlq for s in topology.subscriptions}
    pairs.update({u.queue: u.dlq for u in topology.uploads})
    return pairs


def plain_queues(topology: Topology) -> tuple[str, ...]:
    """Queues a service sends to itself, which are dead-letter queues already."""
    return tuple(q for s in topology.services for q in s.queues)


def construct_id(name: str) -> str:
    """A topology name ("media-worker") as a construct id ("MediaWorker")."""
    return "".join(part.title() for part in name.split("-"))
