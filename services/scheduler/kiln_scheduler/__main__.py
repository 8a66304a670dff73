from kiln_scheduler.app import main

main()
