"""Entry point for spark-submit: `spark-submit [spark options] scripts/spark_entry.py stream ...`.

Runs the same `pulse` CLI; the master, jars and resources come from spark-submit.
"""

import sys

from pulse.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
