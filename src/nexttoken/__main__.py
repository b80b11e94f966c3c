import sys

from nexttoken.cli import main

sys.exit(main())
