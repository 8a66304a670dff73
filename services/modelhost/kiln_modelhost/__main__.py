from kiln_modelhost.server import main

main()
