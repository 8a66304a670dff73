from kiln_gateway.app import main

main()
