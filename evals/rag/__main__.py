import sys

from evals.rag.runner import main

sys.exit(main())
