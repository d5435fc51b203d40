"""How a service container starts on AWS: its URLs are put together from the secrets ECS
injects (credentials rotate, so no URL with a password is stored anywhere), then uvicorn
runs the app as the image's own command does.

The script runs as `python -c BOOT <command...>` in the service image, which has nothing of
deploy/; it needs the standard library only.
"""

from .settings import CONTAINER_PORT

BOOT = """\
import os, sys
from urllib.parse import quote
env = os.environ
def login(user, password):
    return quote(env.pop(user), safe="") + ":" + quote(env.pop(password), safe="")
if "DB_HOST" in env:
    credentials = login("DB_USERNAME", "DB_PASSWORD")
    env["DATABASE_URL"] = (f"postgresql+asyncpg://{credentials}@{env.pop('DB_HOST')}:"
                           f"{env.pop('DB_PORT')}/{env.pop('DB_NAME')}?ssl=require")
if "REDIS_HOST" in env:
    token = quote(env.pop("REDIS_AUTH_TOKEN"), safe="")
    env["REDIS_URL"] = f"rediss://:{token}@{env.pop('REDIS_HOST')}:{env.pop('REDIS_PORT')}/0"
if "SEARCH_HOST" in env:
    credentials = login("SEARCH_USERNAME", "SEARCH_PASSWORD")
    env["SEARCH_URL"] = f"https://{credentials}@{env.pop('SEARCH_HOST')}:443"
os.execvp(sys.argv[1], sys.argv[1:])
"""

# The database secret's fields (as RDS attaches them to a cluster) ECS sets as variables.
DATABASE_FIELDS = {"DB_USERNAME": "username", "DB_PASSWORD": "password", "DB_HOST": "host",
                   "DB_PORT": "port", "DB_NAME": "dbname"}
# The variables BOOT turns into each URL (and removes): those ECS sets from secrets and
# those that are plain.
URL_PARTS = {
    "DATABASE_URL": {"secret": tuple(DATABASE_FIELDS)},
    "REDIS_URL": {"secret": ("REDIS_AUTH_TOKEN",), "plain": ("REDIS_HOST", "REDIS_PORT")},
    "SEARCH_URL": {"secret": ("SEARCH_USERNAME", "SEARCH_PASSWORD"), "plain": ("SEARCH_HOST",)},
}


def command(app: str) -> list[str]:
    """The container's command: BOOT, then uvicorn with the app's factory."""
    return ["python", "-c", BOOT, "uvicorn", "--factory", app, "--host", "0.0.0.0",
            "--port", str(CONTAINER_PORT)]
