"""DP-SGD discriminator step vs the non-private step (now a section of benchmarks/run.py).

  python benchmarks/dp_step.py   ==   python benchmarks/run.py --sections dp_step --out benchmarks/results/dp_step.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import main  # noqa: E402

if __name__ == "__main__":
    main(["--sections", "dp_step", "--out",
          os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dp_step.json"),
          *sys.argv[1:]])
