"""Array kernels of the Normalisr method: numpy/scipy only, no AnnData.

Functions take cells x genes matrices (dense, CSR, or anything row-sliceable such as
h5py datasets and dask arrays) and work one block of cells at a time.
"""
