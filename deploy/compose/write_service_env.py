"""Turn the provisioner's outputs into one env file per service, for compose.

moto gives the user pool and its client random ids, so no static compose file can hold them.
Compose's provision step runs this after `asyncsns-provision --out`; each service's uvicorn
loads its file with `--env-file`. The variables are the launcher's (stack.provision.service_env),
with compose's addresses for the stores.
"""

import argparse
import json
from pathlib import Path

from stack.provision import service_env
from stack.topology import TOPOLOGY, Topology
from stack.vapid import kept_vapid_keys


def dotenv_line(key: str, value: str) -> str:
    """KEY='value', quoted so python-dotenv takes the value literally (JSON included)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{key}='{escaped}'"


def write_env_files(outputs: dict, directory: Path, *, database_url: str, redis_url: str,
                    search_url: str | None = None, public_url: str | None = None,
                    topology: Topology = TOPOLOGY) -> list[Path]:
    """Write `<service>.env` for every service of the topology and `<worker>.env` for each of
    its workers; database_url has `{service}`."""
    written = []
    for service in topology.services:
        for name, worker in [(service.name, None), *((w.name, w.name) for w in service.workers)]:
            env = service_env(outputs, service.name,
                              database_url=database_url.format(service=service.name),
                              redis_url=redis_url, endpoint_url=outputs["endpoint_url"],
                              topology=topology, public_url=public_url, worker=worker,
                              search_url=search_url if service.needs_search else None,
                              vapid=kept_vapid_keys(directory / "vapid.json"))
            path = directory / f"{name}.env"
            path.write_text("".join(dotenv_line(k, v) + "\n" for k, v in sorted(env.items())))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", type=Path, help="the JSON that asyncsns-provision wrote")
    parser.add_argument("directory", type=Path, help="where to write <service>.env")
    parser.add_argument("--database-url", required=True,
                        help="SQLAlchemy URL with {service} where the database name goes")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--search-url", help="OpenSearch, for the services that search")
    parser.add_argument("--public-url", help="where clients reach the gateway (media URLs)")
    args = parser.parse_args(argv)
    outputs = json.loads(args.outputs.read_text())
    for path in write_env_files(outputs, args.directory, database_url=args.database_url,
                                redis_url=args.redis_url, search_url=args.search_url,
                                public_url=args.public_url):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
