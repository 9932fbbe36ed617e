"""Data: every dataset as uint8 tensors (image_data.py; sources.py reads each --dataset, folders.py lists a file
dataset, cache.py decodes it once per node, streaming.py as training reads it), the train split planned and placed
(train_split.py, placement.py), the evaluation set, the order of index batches (loader.py), decoding, downloads,
batched augmentation and the pairs of a Siamese network."""
