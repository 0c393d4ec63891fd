"""`python -m spacy_earlyexit COMMAND`: the same commands as `spacy-earlyexit`."""
from .cli import main

if __name__ == "__main__":
    main()
