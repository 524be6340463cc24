"""`python -m runtime` is the `placeos-runtime` command."""

import sys

from runtime.cli import main

sys.exit(main())
