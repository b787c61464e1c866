"""`python -m statekeeper_server` runs the `statekeeper` command."""

import sys

from statekeeper_server.cli import main

sys.exit(main())
