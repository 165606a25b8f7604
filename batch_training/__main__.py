import sys

from batch_training.cli import main

if __name__ == "__main__":
    sys.exit(main())
