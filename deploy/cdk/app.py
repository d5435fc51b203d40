"""`cdk deploy --all` from deploy/ runs this (cdk.json): the whole asyncsns deployment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asyncsns_cdk.app import build_app  # noqa: E402

build_app().synth()
