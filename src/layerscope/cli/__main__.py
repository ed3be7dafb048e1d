"""``python -m layerscope.cli``: the same CLI as ``layerscope`` and ``python -m layerscope``."""

import sys

from layerscope.cli.app import main

sys.exit(main())
