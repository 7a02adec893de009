"""A/B of what a forward pass keeps for the backward (launch.SAVE_*): switch_ab.py's
"saved" switch (delta from the bf16 O against O kept in fp32), as results 2026-12-05e ran it.

    PYTHONPATH=$PWD python tests/gpu/saved_ab.py [switch_ab.py's options]
"""
import sys

from switch_ab import main

if __name__ == "__main__":
    main(["saved", *sys.argv[1:]])
