"""Tests of ``nsc.pp`` (a package, so that module names cannot clash with other test folders)."""
