from scoretut.cli import main

raise SystemExit(main())
