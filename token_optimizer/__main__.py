from token_optimizer.cli import main

raise SystemExit(main())
