"""``python -m jscorch``: see :mod:`jscorch.cli`."""
from jscorch.cli import main as main

if __name__ == "__main__":
  raise SystemExit(main())
