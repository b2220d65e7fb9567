"""`python -m tcurlora` runs the command-line interface."""

import os
import sys

from tcurlora.cli import main

code = main()
if "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
    # Under torchrun, leave without the interpreter's teardown: gloo's C++ state can abort a rank at exit
    # ("terminate called without an active exception") after its work is written and its group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
