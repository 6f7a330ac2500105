"""`python -m models.train`: the command; it lives in models/training/command.py."""

from models.training.command import main

if __name__ == "__main__":
    main()
