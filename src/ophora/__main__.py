from ophora.cli import main

raise SystemExit(main())
