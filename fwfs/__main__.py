import sys

from fwfs.cli import main

sys.exit(main())
