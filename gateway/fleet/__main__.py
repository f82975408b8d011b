"""``python -m gateway.fleet -c fleet.yaml``: the fleet view (same as ``ot-gateway fleet``)."""

from __future__ import annotations

import sys

from gateway.fleet.cli import main

sys.exit(main(sys.argv[1:]))
