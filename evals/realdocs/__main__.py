import sys

from evals.realdocs.harness import main

sys.exit(main())
