"""`python -m models.baselines`: the command; it lives in models/evaluation/baselines.py."""

from models.evaluation.baselines import main

if __name__ == "__main__":
    main()
