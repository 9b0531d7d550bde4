import sys

from tune_prune.cli import main

sys.exit(main())
