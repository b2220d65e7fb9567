"""`python -m tcurlora` runs the command-line interface."""

from tcurlora.cli import main

raise SystemExit(main())
