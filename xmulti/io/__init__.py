"""Input/output: the HDF5 scan backend, results stores and format converters."""
