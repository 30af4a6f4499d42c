"""Compiled time loops (Numba and Cython). See README.md in this folder for the contract."""
