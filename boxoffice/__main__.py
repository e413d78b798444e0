"""`python -m boxoffice COMMAND`: the `boxoffice` command."""

from boxoffice.service.run.cli import main

raise SystemExit(main())
