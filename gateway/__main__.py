"""`python -m gateway` is the `ot-gateway` command."""

import sys

from gateway.cli import main

sys.exit(main())
