"""`python -m models.emoji`: the command; it lives in models/data/emoji.py."""

from models.data.emoji import main

if __name__ == "__main__":
    main()
