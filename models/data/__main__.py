"""`python -m models.data download mnist`: fetch a data set that no package carries."""

import argparse

from models.data.dataset import DatasetError
from models.data.idx import DEFAULT_DIRS, download_mnist

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Dataset utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download a dataset that is not packaged (mnist)")
    dl.add_argument("name", choices=["mnist"])
    dl.add_argument("--data-dir", default=str(DEFAULT_DIRS["mnist"]))
    args = parser.parse_args()
    try:
        print(download_mnist(args.data_dir))
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
