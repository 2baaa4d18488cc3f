from pocketpilot.cli import main

raise SystemExit(main())
