from kiln_billing.app import main

main()
