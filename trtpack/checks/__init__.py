"""Answers about a file without loading it (torch-free): ``audit`` (what loading it with its
own tool would execute or trust) and ``preflight`` (which engine variant load would pick on a
described machine)."""
