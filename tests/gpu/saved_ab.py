"""A/B of what a forward pass keeps for the backward (launch.SAVE_*): switch_ab.py's
"saved" switch (delta from the bf16 O against O kept in fp32). Results 2026-12-05e were measured
by this script's earlier standalone form (`f695f68`), with the same cases, timing and rounds.

    PYTHONPATH=$PWD python tests/gpu/saved_ab.py [switch_ab.py's options]
"""
import sys

from switch_ab import main

if __name__ == "__main__":
    main(["saved", *sys.argv[1:]])
