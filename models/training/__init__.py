"""Training: `python -m models.train FAMILY ...` (command.py) runs the trainer its family's
objective names (trainers.py) over a data set, saving resumable state and servable checkpoints."""
