"""The data of a comparison: the embedded synthetic set and COCO-format data on disk, read lazily."""
