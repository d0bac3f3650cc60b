"""`python -m geniehive` runs the `geniehive` command."""

from __future__ import annotations

import sys

from geniehive.cli import main

sys.exit(main())
