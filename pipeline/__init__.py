"""Stage 1 of phonerec: raw MFCC corpus -> zarr stores -> normalized, length-sorted WebDataset shards."""
