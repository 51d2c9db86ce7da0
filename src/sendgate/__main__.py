"""`python -m sendgate` runs the command-line interface."""

import sys

from sendgate.cli import main

sys.exit(main())
