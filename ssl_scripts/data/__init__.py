"""Data: datasets as uint8 tensors and the order of their batches, where the train split lives, decoding,
downloads, batched augmentation and the pairs of a Siamese network."""
