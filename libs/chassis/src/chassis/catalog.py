"""Write the event catalog: `python -m chassis.catalog MODULE... > catalog.json`."""

import importlib
import json
import sys

from .events import CATALOG, catalog_schema


def render(modules: list[str]) -> str:
    """The catalog of the event types the given modules define, as stable JSON."""
    for module in modules:
        importlib.import_module(module)
    catalog = catalog_schema()
    catalog["events"] = {name: schema for name, schema in catalog["events"].items()
                         if CATALOG[name][1].__module__ in modules}
    return json.dumps(catalog, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1:]))
