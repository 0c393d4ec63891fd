"""`python -m spacy_earlyexit <command>`: see spacy_earlyexit.cli."""
from .cli import main

if __name__ == "__main__":
    main()
