"""`python -m vicino.services.cli`, as the launcher and the tests start the services."""
from vicino.services.cli import main

if __name__ == "__main__":
    main()
