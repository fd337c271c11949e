"""Puts ``tests/nn`` on ``sys.path`` so the layer tests share ``layer_util``."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
