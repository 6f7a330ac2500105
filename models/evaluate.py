"""`python -m models.evaluate`: the command; it lives in models/evaluation/evaluate.py."""

from models.evaluation.evaluate import main

if __name__ == "__main__":
    main()
