import sys

from edge_agent.rag.cli import main

sys.exit(main())
