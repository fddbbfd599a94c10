from server.process.cli import main

raise SystemExit(main())
