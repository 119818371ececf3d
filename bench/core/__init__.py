"""The bottom layer, used by every other: errors, the registry shape, atomic files, hashing,
patches and the shared cache. Nothing here knows a method, a dataset or a study."""
