import os
import sys

# tests import shared helpers (opcheck, zoo) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))
