"""`python -m tokentrim.cli`: the command line lives in `tokentrim.app.cli`; this name is kept for old scripts."""

import sys

from tokentrim.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
