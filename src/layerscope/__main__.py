"""``python -m layerscope`` (and ``torchrun -m layerscope``): the same CLI as the ``layerscope`` command."""

import sys

from layerscope.cli.app import main

sys.exit(main())
