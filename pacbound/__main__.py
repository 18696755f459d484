"""``python -m pacbound`` runs the command-line tool."""

from pacbound.cli.main import main

if __name__ == "__main__":
    main()
