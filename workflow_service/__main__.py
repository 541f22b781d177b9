"""`python -m workflow_service`: read settings from the environment and run the service."""

from shared.service import run
from workflow_service.bootstrap import SETTINGS, main

if __name__ == "__main__":
    run(SETTINGS(), main)  # type: ignore[arg-type]  # main takes the service's subclass
