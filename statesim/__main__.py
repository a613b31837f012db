"""``python -m statesim``."""
import sys

from statesim.cli import main

sys.exit(main())
