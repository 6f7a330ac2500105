"""`python -m models.latent_map`: the command; it lives in models/evaluation/latent_map.py."""

from models.evaluation.latent_map import main

if __name__ == "__main__":
    main()
