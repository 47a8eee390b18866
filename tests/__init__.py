"""Tests of normalisr_sc: one package, whose folders share tests/_helpers.py."""
