"""``python -m trustvision`` (and ``torchrun -m trustvision train ...``): the CLI."""
from .cli.app import main

if __name__ == "__main__":
    main()
