import sys

from mdpalign.cli import main

sys.exit(main())
