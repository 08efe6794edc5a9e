from device_tests.cli import main

raise SystemExit(main())
