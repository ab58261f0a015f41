"""``python -m tsal_runtime`` == ``tsal-runtime``."""

from tsal_runtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
