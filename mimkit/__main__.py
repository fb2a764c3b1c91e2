"""``python -m mimkit COMMAND``: the same as the ``mimkit`` command."""

import sys

from mimkit.cli import main

sys.exit(main())
