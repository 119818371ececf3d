"""The bottom layer, used by every other: errors, the registry shape, atomic files, hashing,
patches, thread-scoped values and the shared cache. Nothing here knows a method, a dataset or a study."""
