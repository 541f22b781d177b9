"""`python -m query_service`: read settings from the environment and run the service."""

from query_service.bootstrap import SETTINGS, main
from shared.service import run

if __name__ == "__main__":
    run(SETTINGS(), main)  # type: ignore[arg-type]  # main takes the service's subclass
