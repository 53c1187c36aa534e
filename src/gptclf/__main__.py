import sys

from gptclf.cli import main

sys.exit(main())
