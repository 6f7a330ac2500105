"""`python -m models.showcase`: the command; it lives in models/evaluation/showcase.py."""

from models.evaluation.showcase import main

if __name__ == "__main__":
    main()
