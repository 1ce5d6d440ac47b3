"""`python -m toptracks_dagster.cli ...` = `toptracks ...`."""

import sys

from toptracks_dagster.cli import main

sys.exit(main())
