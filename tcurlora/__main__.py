"""`python -m tcurlora` runs the command-line interface."""

import os
import sys

from tcurlora.cli import main
from tcurlora.torchrun_env import launched

code = main()
if launched():
    # Under torchrun, leave without the interpreter's teardown: gloo's C++ state can abort a rank at exit
    # ("terminate called without an active exception") after its work is written and its group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
