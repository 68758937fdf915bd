"""``python -m concept_probe`` (and ``torchrun -m concept_probe``): the command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
