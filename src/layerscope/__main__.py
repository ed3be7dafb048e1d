"""``python -m layerscope`` (and ``torchrun -m layerscope``): the same CLI as the ``layerscope`` command."""

import sys

from .cli import main

sys.exit(main())
