import sys

from modelchip.cli.main import main

sys.exit(main())
