"""The configs shipped with lmsgd (installed as `lmsgd.configs`; see lmsgd/config_files.py)."""
