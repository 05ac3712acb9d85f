"""``python -m sieve.cli``: the ``sieve`` command."""

import sys

from sieve.cli import main

sys.exit(main())
