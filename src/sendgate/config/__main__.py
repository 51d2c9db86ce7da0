"""`python -m sendgate.config` prints docs/config.md, the reference generated from the schema."""

import sys

from sendgate.config.render import render_docs

sys.stdout.write(render_docs())
