"""Compiled torch ops of vecfusion (``torch.ops.vecfusion_ops``); importing registers them.

Use the layers in ``vecfusion.torch`` rather than this package directly.
"""

from __future__ import annotations

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import _C  # noqa: F401

__all__: list[str] = []
