"""Test configuration: the plugin must be imported before BasicSR (functional_tensor alias)."""
import os
import sys

import metasr_arch  # noqa: F401

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py
