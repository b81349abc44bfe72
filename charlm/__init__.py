"""charlm: the character language model application: train, fine-tune, evaluate and sample on any text.

config      the [model] and [train] schema, TOML files, overrides; the one place a run's config is made
corpus      reading a corpus, its vocabulary, the train/validation split, batches, a run's data
checkpoint  the run checkpoint: what a run saves, reading it back, the model it describes
run         the run directory: its files, checkpoints and metrics log
trainer     the training loop
evaluate    the validation loss and a text's score (nats/char, bits/char, perplexity)
sample      sampling text from a model

Dependencies point one way: charlm -> models -> tinygraph.  Nothing here draws: the CLI hands the
trainer a callback that plots the losses.
"""
