"""Renders the gateway's nginx config from the topology: the ALB listener rules, locally."""

import json
import os
import pwd
import shutil
from pathlib import Path

from chassis.problems import PROBLEM_BASE

from .topology import MEDIA_PATH, TOPOLOGY, UPLOADS_PATH, Topology

GATEWAY_PROBLEMS = {
    400: ("Bad Request", "the gateway could not read the request"),
    403: ("Forbidden", "this path does not take this method"),
    404: ("Not Found", "no service answers this path"),
    413: ("Content Too Large", "the request body is larger than 1 MiB"),
    502: ("Bad Gateway", "the service behind this path did not answer"),
    503: ("Service Unavailable", "the service behind this path is unavailable"),
    504: ("Gateway Timeout", "the service behind this path did not answer in time"),
}
WEBSOCKET_PREFIX = "/ws/"
UPSTREAM_KEEPALIVE = 256
# Other request headers (traceparent, Authorization) pass through untouched.
FORWARDED_HEADERS = (
    "Host $http_host",
    "X-Forwarded-For $proxy_add_x_forwarded_for",
    "X-Forwarded-Proto $scheme",
)


def problem_body(status: int) -> str:
    """The RFC 9457 body the gateway answers with when no service does."""
    title, detail = GATEWAY_PROBLEMS[status]
    slug = title.lower().replace(" ", "-")
    return json.dumps({"type": PROBLEM_BASE + slug, "title": title, "status": status,
                       "detail": detail}, separators=(",", ":"))


def render_nginx_conf(upstreams: dict[str, list[str]], *, health_upstream: str, listen: str,
                      prefix_dir: str | None, topology: Topology = TOPOLOGY,
                      user: str | None = None, storage: str | None = None) -> str:
    """nginx.conf routing each declared path prefix to its service's replicas.

    With prefix_dir (the launcher), nginx runs in the foreground with its pid, temp files and
    error log under that directory; without it (a container), the image's defaults apply.
    `user` is for a launcher running as root, so that workers can use prefix_dir.
    `storage` is the S3 endpoint's host:port where no CDN and no real S3 exist (moto): the
    gateway then serves the media bucket and passes upload forms on, as CloudFront and S3
    do on AWS.
    """
    # Every chat session holds two connections here (client and upstream) for its lifetime.
    main = ["worker_processes 2;", "worker_rlimit_nofile 40000;"]
    http = []
    if prefix_dir:
        main = ["daemon off;", f"pid {prefix_dir}/nginx.pid;",
                f"error_log {prefix_dir}/error.log warn;", *main]
        if user:
            main.append(f"user {user};")
        http += [f"{kind}_temp_path {prefix_dir}/{kind}_temp;"
                 for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    else:
        main.append("error_log stderr warn;")
    http += _http_settings()
    http += _upstream("stack_health", [health_upstream])
    for name, servers in upstreams.items():
        http += _upstream(f"svc_{name}", servers)
    routes = route_table(upstreams, topology)
    http += _method_maps(routes)
    if storage:
        http += _upstream("storage", [storage])
    body = _server_body(routes, _storage_locations(topology, storage) if storage else [])
    http += ["server {", f"    listen {listen};", *_indent(body), "}"]
    return "\n".join([*main, "events {", "    worker_connections 20000;", "}",
                      "http {", *_indent(http), "}", ""])


def _http_settings() -> list[str]:
    return [
        "keepalive_requests 100000;",  # per client connection; nginx's default closes at 1,000
        "access_log off;",
        "server_tokens off;",
        "default_type application/octet-stream;",
        "client_max_body_size 1m;",  # the services' own limit (ServiceSettings.max_body_bytes)
        # One header line must fit one buffer: bearer tokens can be large, and the service
        # (not the gateway) is the one to judge and refuse them.
        "large_client_header_buffers 4 512k;",
        "proxy_http_version 1.1;",
        # Buffered: a response is read from the replica whole and written to the client in one
        # go (fewer wake-ups on both sides). A stream that must not wait (server-sent events)
        # says so with `X-Accel-Buffering: no`.
        "proxy_buffering on;",
        "proxy_request_buffering on;",
        "proxy_connect_timeout 5s;",
        "proxy_read_timeout 60s;",
        "proxy_next_upstream error timeout;",
        "map $http_upgrade $connection_upgrade {",
        "    default upgrade;",
        "    '' '';",
        "}",
    ]


def _upstream(name: str, servers: list[str]) -> list[str]:
    if not servers:
        raise ValueError(f"upstream {name} has no servers")
    # least_conn: a request goes to the replica with the fewest requests in flight (ties take
    # turns), as the ALB's least outstanding requests does. A replica that falls behind for a
    # moment then gets fewer new requests instead of an equal share queueing behind it
    # (reads p99 14.5-26.0 ms against 18.6-31.2 with round robin, alternating runs).
    # keepalive: idle connections to the replicas are kept for reuse, per worker, as many as
    # there can be requests in flight. With fewer, every request past the pool's size opens
    # a fresh connection and closes it (reads p99 40-116 ms with 16 kept, 30-90 ms with 128).
    return [f"upstream {name} {{", "    least_conn;",
            *[f"    server {s} max_fails=1 fail_timeout=2s;" for s in servers],
            f"    keepalive {UPSTREAM_KEEPALIVE};", "    keepalive_requests 100000;", "}"]


def route_table(upstreams: dict[str, list[str]],
                topology: Topology) -> dict[str, dict[str | None, str]]:
    """Path prefix -> {method or None (any): upstream}, like the ALB's listener rules."""
    table: dict[str, dict[str | None, str]] = {}
    for service in topology.services:
        if service.name not in upstreams:
            continue
        for method, path in service.path_routes:
            owners = table.setdefault(path, {})
            if method in owners:
                raise ValueError(f"{method or 'any method'} {path} is routed twice")
            owners[method] = f"svc_{service.name}"
    return table


def _map_name(path: str) -> str:
    return "$route" + "".join(c if c.isalnum() else "_" for c in path)


def _method_maps(routes: dict[str, dict[str | None, str]]) -> list[str]:
    """A map from request method to upstream for each path that methods split."""
    lines = []
    for path, owners in routes.items():
        if set(owners) == {None}:
            continue
        if None not in owners:
            raise ValueError(f"{path} is routed for some methods only; give it a default owner")
        lines.append(f"map $request_method {_map_name(path)} {{")
        for method, upstream in owners.items():
            if method is not None:
                methods = (method, "HEAD") if method == "GET" else (method,)
                lines += [f"    {m} {upstream};" for m in methods]
        lines += [f"    default {owners[None]};", "}"]
    return lines


def _storage_locations(topology: Topology, storage: str) -> list[str]:
    """Media variants, read-only, from the public bucket (their Cache-Control and
    Content-Type were set on upload); upload forms to the private bucket, POST only."""
    uploads = f"{UPLOADS_PATH}{topology.uploads_bucket}"
    return [
        f"location {MEDIA_PATH} {{",
        "    limit_except GET { deny all; }",
        f"    proxy_pass http://storage/{topology.media_bucket}{MEDIA_PATH};",
        f"    proxy_set_header Host {storage};",
        '    proxy_set_header Connection "";',
        "    proxy_set_header Authorization \"\";",
        "    proxy_intercept_errors on;",
        "}",
        f"location = {uploads} {{",
        "    limit_except POST { deny all; }",
        # The largest file the limits allow, with room for the form's other fields; the
        # presigned policy (S3) and the media worker (moto) hold each upload to its own size.
        "    client_max_body_size 256m;",
        "    proxy_request_buffering off;",
        f"    proxy_pass http://storage/{topology.uploads_bucket};",
        f"    proxy_set_header Host {storage};",
        '    proxy_set_header Connection "";',
        "    proxy_read_timeout 300s;",
        "}",
    ]


def _server_body(routes: dict[str, dict[str | None, str]],
                 extra: list[str]) -> list[str]:
    body = [f"error_page {status} @problem_{status};" for status in GATEWAY_PROBLEMS]
    body.append("error_page 494 @problem_400;")  # nginx's own code for headers too large
    body += _location("= /api/health", "stack_health")
    body += extra
    for path, owners in routes.items():
        upstream = owners[None] if set(owners) == {None} else _map_name(path)
        body += _location(path, upstream, websocket=path.startswith(WEBSOCKET_PREFIX))
    body += ["location / {", "    return 404;", "}"]
    for status in GATEWAY_PROBLEMS:
        body += [f"location @problem_{status} {{",
                 "    default_type application/problem+json;",
                 f"    return {status} '{problem_body(status)}';", "}"]
    return body


def _location(match: str, upstream: str, *, websocket: bool = False) -> list[str]:
    # No URI after the upstream name: the service sees the full /api/... path, as behind an ALB.
    # proxy_set_header is inherited only by levels that set none, so each location sets all.
    lines = [f"location {match} {{", f"    proxy_pass http://{upstream};",
             *[f"    proxy_set_header {header};" for header in FORWARDED_HEADERS]]
    if websocket:
        lines += ["    proxy_set_header Upgrade $http_upgrade;",
                  "    proxy_set_header Connection $connection_upgrade;",
                  "    proxy_read_timeout 1h;"]
    else:
        # An empty Connection header keeps the upstream connection open for reuse.
        lines.append('    proxy_set_header Connection "";')
    return [*lines, "}"]


def _indent(lines: list[str]) -> list[str]:
    return [f"    {line}" for line in lines]


def nginx_binary() -> str:
    """Where nginx is; Debian puts it in /usr/sbin, which a user's PATH may lack."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if binary is None:
        raise FileNotFoundError("nginx is not installed: run `make up` (it installs it) "
                                "or `apt-get install -y nginx`")
    return binary


def prepare_local(prefix_dir: Path, upstreams: dict[str, list[str]], *, health_upstream: str,
                  listen: str, topology: Topology = TOPOLOGY,
                  storage: str | None = None) -> list[str]:
    """Write nginx.conf under prefix_dir for a foreground run; returns the command to run it."""
    binary = nginx_binary()
    prefix_dir.mkdir(parents=True, exist_ok=True)
    # As root, nginx would run its workers as www-data, who cannot use a private prefix.
    user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    conf = prefix_dir / "nginx.conf"
    conf.write_text(render_nginx_conf(upstreams, health_upstream=health_upstream, listen=listen,
                                      prefix_dir=str(prefix_dir), topology=topology, user=user,
                                      storage=storage))
    # -e: the compiled-in error log under /var/log is not writable without root.
    return [binary, "-c", str(conf), "-p", str(prefix_dir), "-e", str(prefix_dir / "error.log")]
