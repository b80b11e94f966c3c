"""`python -m nexttoken`: the same command as `nexttoken`."""

import sys

from nexttoken.cli import main

sys.exit(main())
